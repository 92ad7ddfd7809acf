"""The SIGTERM flag (the end-to-end preemption run is in test_resume.py)."""

import os
import signal

from mogao_jax.train import preempt


def test_sigterm_sets_the_flag_and_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  p = preempt.Preemption(manager=None)
  assert not p.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)  # handled by the flag: the process lives on
  assert p.reached(2)
  p.close()
  assert signal.getsignal(signal.SIGTERM) is before
