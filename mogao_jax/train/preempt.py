"""Preemption: stop at the next step boundary after SIGTERM, with a checkpoint.

Single process: our SIGTERM handler only sets a flag; the loop saves and returns at the next step
boundary (exit code 0), and rerunning the same command resumes. A second SIGTERM before that
boundary (a step, compile or input that never finishes) exits at once with code 143, saying
why, without that save: the last checkpoint stays. Multi-process (TPU pods): every
process must save at the SAME step, which a local signal cannot promise, so there we leave
SIGTERM to JAX's preemption service (installed by ``jax.distributed.initialize``) and ask its
sync point (via orbax's ``reached_preemption``, which treats a disabled service as "no").
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging
import jax


class Preemption:

  def __init__(self, manager):
    self.manager = manager  # orbax CheckpointManager
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    # os.write: the handler may interrupt anything, even a log call or a save, so it only
    # writes and sets a flag; the loop acts at its next step boundary.
    if self.signalled:
      os.write(2, b"preemption: second SIGTERM before a step boundary was reached; exiting now"
                  b" without saving (the last checkpoint stays)\n")
      raise SystemExit(128 + signum)
    self.signalled = True
    os.write(2, b"preemption: SIGTERM; saving and stopping at the next step boundary (a second"
                b" SIGTERM exits at once, without that save)\n")

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (call at every step boundary, on every process)."""
    if self.signalled:
      return True
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if self.signalled:
      logging.info("preemption: SIGTERM handled")
