"""End to end: train 4 steps; resume a copy from its step-2 checkpoint in a fresh process; the
resumed steps 3 and 4 must reproduce the same losses (state, optimizer, RNG and data order)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from mogao_jax.train import loop
from tests.conftest import REPO, tiny_config

_CONFIG_FILE = '''
import sys
sys.path.insert(0, {repo!r})
from tests.conftest import tiny_config


def get_config():
  return tiny_config()
'''


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  """step -> loss of the LAST record of each step in metrics.jsonl (a resume appends)."""
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_resume_reproduces_losses(tmp_path):
  config = tiny_config()
  assert (config.train.steps, config.train.ckpt_every, config.train.log_every) == (4, 2, 1)
  first = tmp_path / "first"
  loop.train(config, str(first))
  assert sorted(os.listdir(first / "checkpoints")) == ["2", "4"]
  assert (first / "config.json").exists() and list((first / "tb").iterdir())

  # A copy that stopped at step 2: resume it in a fresh process.
  resumed = tmp_path / "resumed"
  shutil.copytree(first, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  cfg_file = tmp_path / "tiny_test.py"
  cfg_file.write_text(_CONFIG_FILE.format(repo=str(REPO)))
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.train", "--config", str(cfg_file),
       "--workdir", str(resumed)], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "restored step 2" in out.stderr

  want, got = _losses(first), _losses(resumed)
  assert sorted(want) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[3], got[4]], [want[3], want[4]], rtol=1e-5)
  assert sorted(os.listdir(resumed / "checkpoints")) == ["2", "4"]
