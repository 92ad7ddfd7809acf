"""The SIGTERM flag (the end-to-end preemption run is in test_resume.py)."""

import os
import signal
import subprocess
import sys
import time

from mogao_jax.train import preempt
from tests.configs import REPO


def test_sigterm_sets_the_flag_and_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  p = preempt.Preemption(manager=None)
  assert not p.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)  # handled by the flag: the process lives on
  assert p.reached(2)
  p.close()
  assert signal.getsignal(signal.SIGTERM) is before


_STUCK = """
from mogao_jax.train import preempt
p = preempt.Preemption(manager=None)
print("ready", flush=True)
while True:  # work that never reaches a step boundary (a packer, an input, a hung step)
  pass
"""


def test_a_second_sigterm_ends_a_process_that_reaches_no_step_boundary():
  proc = subprocess.Popen([sys.executable, "-c", _STUCK], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    # Wait until the first SIGTERM was handled (its log line): two signals sent before the
    # process is scheduled again coalesce into one (POSIX signals do not queue), which on a
    # loaded CI host made this test send its "second" signal into the first.
    first = []
    while True:
      line = proc.stderr.readline()
      assert line, "the process ended after one SIGTERM"
      first.append(line)
      if "saving and stopping at the next step boundary" in line:
        break
    time.sleep(0.5)
    assert proc.poll() is None  # the first only asks for a save at the next boundary
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
  finally:
    proc.kill()
  err = "".join(first) + proc.stderr.read()
  assert rc == 128 + signal.SIGTERM, err
  assert "saving and stopping at the next step boundary" in err
  assert "second SIGTERM before a step boundary was reached; exiting now" in err
