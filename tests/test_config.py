"""The entry point rejects bad config overrides by name, before JAX does any work."""

import subprocess
import sys

import pytest

from tests.configs import REPO


def _run(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "mogao_jax.train", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flag, needle", [
    ("--config.train.stepz=3", "stepz"),
    ("--config.train.steps=abc", "config.train.steps"),
    ("--config.optim.lr=fast", "config.optim.lr"),
])
def test_bad_override_names_the_key(tmp_path, flag, needle):
  out = _run("--config", str(REPO / "experiments" / "tiny_cpu.py"), flag,
             "--workdir", str(tmp_path / "w"))
  assert out.returncode != 0
  assert needle in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "w").exists()  # failed before the loop started


def test_shrunk_config_keeps_the_schema(config):
  # The test config must stay a valid override of the real one: same keys, same types.
  from tests.configs import load_config  # pylint: disable=g-import-not-at-top
  full = load_config().to_dict()
  small = config.to_dict()
  assert full.keys() == small.keys()
  for section in full:
    if isinstance(full[section], dict):
      assert full[section].keys() == small[section].keys(), section

