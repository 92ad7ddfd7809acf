"""Shared test setup: 8 simulated CPU devices, a persistent compile cache, tiny configs.

The environment must be set before JAX is imported anywhere, hence at the top of this file.
"""

import importlib.util
import os
import pathlib

os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CPU = REPO / "experiments" / "tiny_cpu.py"

# Repeat test runs skip XLA compiles: cache every compiled program, however fast it compiled.
jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_config(path=TINY_CPU):
  """``get_config()`` of an experiment file, by path (experiments/ is not a package)."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shrink_config(config):
  """Test-sized copy of ``config``: a model and batch that compile and step in seconds."""
  c = config.copy_and_resolve_references()
  c.data.update(dict(image_size=16, patch_size=4, vocab_size=128, l_txt=64, l_vis=64,
                     batch_size=8, shuffle_buffer=16, num_workers=0))
  c.model.update(dict(vocab_size=128, width=32, depth=2, num_heads=2, num_kv_heads=1,
                      head_dim=16, mlp_dim=64, latent_dim=48, patch_dim=48, vit_width=32,
                      vit_depth=1, vit_heads=2, vit_grid=4))
  c.optim.warmup_steps = 1
  c.train.update(dict(steps=4, log_every=1, ckpt_every=2, keep_checkpoints=2))
  return c


def tiny_config():
  """experiments/tiny_cpu.py shrunk for tests."""
  return shrink_config(load_config())


@pytest.fixture
def config():
  return tiny_config()


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: slow test; run with --runslow or -m slow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow or -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
