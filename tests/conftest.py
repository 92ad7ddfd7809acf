"""Shared test setup: 8 simulated CPU devices, a persistent compile cache, the tiny config
fixture (test configs live in tests/configs.py).

The environment must be set before JAX is imported anywhere, hence at the top of this file.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

from tests.configs import REPO, tiny_config  # noqa: E402


# Repeat test runs skip XLA compiles: cache every compiled program, however fast it compiled.
jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def config():
  return tiny_config()


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: slow test; run with --runslow or -m slow")
  config.addinivalue_line("markers",
                          "aot: ahead-of-time compile for a GPU / TPU target (.[aot]; .ci/run)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow or -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
