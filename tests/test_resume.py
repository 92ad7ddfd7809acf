"""Exact resume under preemption: a run stopped by SIGTERM (clean exit 0, checkpoint) and killed
by SIGKILL (mid async save, mid step), restarted with the same command each time, reproduces the
per-step losses of an uninterrupted run BIT FOR BIT."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mogao_jax.train import loop
from tests.configs import REPO, tiny_config

_OVERRIDES = dict(steps=8, ckpt_every=2, log_every=1, keep_checkpoints=2)
_CONFIG_FILE = '''
import sys
sys.path.insert(0, {repo!r})
from tests.configs import tiny_config


def get_config():
  c = tiny_config()
  c.train.update({overrides!r})
  return c
'''


def _losses(workdir) -> dict[int, float]:
  """step -> loss of the LAST record of each step in metrics.jsonl (a resume appends)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:  # a line cut by SIGKILL
      continue
    out[rec["step"]] = rec["loss"]
  return out


_TIMING = ("step_time_s", "tokens_per_s", "compile_s")  # wall-clock: differ run to run


def _records(workdir) -> list[dict]:
  """metrics.jsonl as written (strict: a torn or repeated line would show), timing left out."""
  return [{k: v for k, v in json.loads(line).items() if k not in _TIMING}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _run(cfg_file, workdir, trigger=None, sig=None, delay=0.0):
  """Runs the training command; sends ``sig`` ``delay`` s after a stderr line contains
  ``trigger``."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.Popen(
      [sys.executable, "-m", "mogao_jax.train", "--config", str(cfg_file),
       "--workdir", str(workdir)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(300, proc.kill)
  watchdog.start()
  lines, sent = [], False
  for line in proc.stderr:
    lines.append(line)
    if trigger and not sent and trigger in line:
      threading.Timer(delay, proc.send_signal, (sig,)).start()
      sent = True
  rc = proc.wait()
  watchdog.cancel()
  return rc, "".join(lines), sent


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def _reference_and_run_dir(tmp_path):
  """(losses of an uninterrupted in-process run, config file, fresh workdir for the kills)."""
  config = tiny_config()
  config.train.update(_OVERRIDES)
  ref = tmp_path / "ref"
  loop.train(config, str(ref))
  want = _losses(ref)
  assert sorted(want) == list(range(1, 9))
  cfg_file = tmp_path / "tiny_test.py"
  cfg_file.write_text(_CONFIG_FILE.format(repo=str(REPO), overrides=_OVERRIDES))
  run = tmp_path / "run"
  run.mkdir()
  (run / "tokenizer.model").write_bytes((ref / "tokenizer.model").read_bytes())
  return want, cfg_file, run


@pytest.mark.slow  # keeps the default suite under 20 min cold on 2 cores; CI runs -m slow
def test_kill_and_resume_is_bit_exact(tmp_path):
  want, cfg_file, run = _reference_and_run_dir(tmp_path)

  # 1. SIGTERM after step 1: saves at the next step boundary, exits 0, says so.
  rc, err, sent = _run(cfg_file, run, "] step 1 ", signal.SIGTERM)
  assert sent and rc == 0, err[-3000:]
  assert "preemption: saved a checkpoint of step" in err
  first_stop = _steps(run)[-1]
  assert 1 <= first_stop < 6
  # 2. SIGKILL as the step-6 save starts (its async write is in flight).
  rc, err, sent = _run(cfg_file, run, "checkpoint: saving step 6", signal.SIGKILL)
  assert sent and rc == -signal.SIGKILL, err[-3000:]
  assert f"restored step {first_stop}" in err
  # 3. SIGKILL after step 7 was logged: during step 8.
  rc, err, sent = _run(cfg_file, run, "] step 7 ", signal.SIGKILL)
  assert sent and rc == -signal.SIGKILL, err[-3000:]
  # 4. The same command finishes the run.
  rc, err, _ = _run(cfg_file, run)
  assert rc == 0, err[-3000:]
  assert "restored step" in err

  got = _losses(run)
  assert sorted(got) == list(range(1, 9))
  assert got == want  # bit for bit: JSON floats round-trip exactly
  assert _steps(run) == [6, 8]
  # The file itself equals the uninterrupted run's: each resume dropped the records past the
  # step it restored (and a line cut by SIGKILL), so no step appears twice.
  assert _records(run) == _records(tmp_path / "ref")


@pytest.mark.slow
def test_sigkill_at_random_moments_is_bit_exact(tmp_path):
  """SIGKILL at random times after training starts (steps, saves, anywhere), then finish."""
  want, cfg_file, run = _reference_and_run_dir(tmp_path)
  rng = np.random.default_rng(int(time.time()))
  for _ in range(4):
    delay = float(rng.uniform(0.0, 2.0))
    rc, err, _ = _run(cfg_file, run, "training steps", signal.SIGKILL, delay)
    if rc == 0:  # finished before the kill landed
      break
    assert rc == -signal.SIGKILL, err[-3000:]
  rc, err, _ = _run(cfg_file, run)
  assert rc == 0, err[-3000:]
  assert _losses(run) == want
  assert _records(run) == _records(tmp_path / "ref")
