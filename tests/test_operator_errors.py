"""A full disk (injected OSError(ENOSPC), not a filled disk) and other operator errors end as one
line naming the last good checkpoints, exit non-zero, no traceback; the error in flight is the
one raised (the shutdown does not raise a second)."""

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import integrity
from mogao_jax.train import loop
from mogao_jax.train import operator_errors
from mogao_jax.train import runcard
from tests.configs import REPO


def _enospc(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize("where", [
    "save", pytest.param("background", marks=pytest.mark.slow)])  # ~35 s each under load
def test_disk_full_during_a_run(config, tmp_path, monkeypatch, where):
  # steps / ckpt_every as test_nan_guard.py / test_resume.py: the same compiled step.
  config.train.update(dict(steps=8, ckpt_every=2, keep_checkpoints=0))
  if where == "save":  # the save call itself fails at step 4
    real = ckpt_lib.Checkpointer.save

    def save(self, step, *a, **k):
      if step == 4:
        raise _enospc(os.path.join(self.directory, "4"))
      return real(self, step, *a, **k)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save)
  else:  # orbax's background thread fails while finishing step 4's save
    real_write = integrity.write

    def write(step_dir):
      if os.path.basename(step_dir).startswith("4."):
        raise _enospc(step_dir)
      return real_write(step_dir)
    monkeypatch.setattr(integrity, "write", write)
  with pytest.raises(Exception) as e:
    loop.train(config, str(tmp_path))
  msg = operator_errors.message(e.value, str(tmp_path))
  assert msg is not None and "\n" not in msg, repr(e.value)
  assert msg.startswith("the disk is full (ENOSPC): ")
  assert f"the last good checkpoints: steps [2] in {tmp_path / 'checkpoints'}" in msg
  assert operator_errors.checkpoint_steps(str(tmp_path)) == [2]
  assert not (tmp_path / "trainer.lock").exists()  # the lock went with the run
  assert runcard.read_run_card(str(tmp_path))["status"].startswith("failed:")


def test_permission_denied_reads_as_one_line(tmp_path):
  e = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "checkpoints"))
  msg = operator_errors.message(RuntimeError("save failed").with_traceback(None), str(tmp_path))
  assert msg is None  # not an operator error: the traceback stays
  wrapped = RuntimeError("orbax: save failed")
  wrapped.__cause__ = e
  msg = operator_errors.message(wrapped, str(tmp_path))
  assert msg.startswith("permission denied (EACCES): ") and "no checkpoint saved yet" in msg


_MAIN = textwrap.dedent("""
    import errno, os, sys
    sys.path.insert(0, {repo!r})
    sys.argv = ["train", "--workdir", {workdir!r}]
    from absl import app
    from mogao_jax.train import __main__ as entry
    def train(config, workdir, hooks=()):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), workdir + "/checkpoints/4")
    entry.loop.train = train
    app.run(entry.main, flags_parser=entry._parse_flags)
""")


def test_the_entry_point_prints_one_line_and_no_traceback(tmp_path):
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  proc = subprocess.run([sys.executable, "-c", _MAIN.format(repo=str(REPO),
                                                           workdir=str(tmp_path))],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert lines == [f"error: the disk is full (ENOSPC): [Errno 28] No space left on device:"
                   f" '{tmp_path}/checkpoints/4'; the last good checkpoints: steps [2] in"
                   f" {tmp_path}/checkpoints. Free space or fix the permissions, then rerun the"
                   " same command to resume."]
