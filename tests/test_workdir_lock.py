"""One trainer per workdir: a second one stops at start-up naming the holder; a crashed holder's
lock is taken over on its host; another host's lock is refused with how to clear it."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from mogao_jax.train import loop
from mogao_jax.train import workdir_lock
from tests.configs import REPO

_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from mogao_jax.train import workdir_lock
    workdir_lock.acquire({workdir!r})
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
  """A subprocess holding the workdir's lock (no JAX: it only imports the lock module)."""
  proc = subprocess.Popen(
      [sys.executable, "-c", _HOLDER.format(repo=str(REPO), workdir=str(tmp_path))],
      stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  yield proc
  proc.kill()
  proc.wait()


def test_a_second_trainer_stops_naming_the_holder(config, tmp_path, holder):
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=rf"in use by another trainer: pid {holder.pid} on host"
                           rf" {socket.gethostname()}"):
    loop.train(config, str(tmp_path))
  assert not (tmp_path / "config.json").exists()  # stopped before writing anything
  assert not (tmp_path / "checkpoints").exists()


def test_a_crashed_holders_lock_is_taken_over(tmp_path, holder, caplog):
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lock.hold(str(tmp_path)):
    held = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
  assert f"taking over {tmp_path / workdir_lock.LOCK_FILE} from pid {holder.pid}" in caplog.text
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released on exit


def test_another_hosts_lock_is_refused(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"pid": 4242, "host": "node-7", "start_time": "2026-12-01T00:00:00+00:00"}))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=r"pid 4242 on host node-7 .*another host.*delete .*trainer\.lock"):
    workdir_lock.acquire(str(tmp_path))
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # left for the operator to judge


def test_only_the_primary_locks_and_the_refusal_reaches_all(tmp_path, holder):
  with workdir_lock.hold(str(tmp_path), primary=False):  # process k > 0 trusts process 0
    pass
  shared = []
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid}"):
    with workdir_lock.hold(str(tmp_path), share=lambda why: shared.append(why) or why):
      pass
  assert len(shared) == 1 and f"pid {holder.pid}" in shared[0]
