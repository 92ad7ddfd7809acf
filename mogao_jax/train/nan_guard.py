"""Host side of the NaN/Inf guard (the skip itself happens inside the jitted step).

The step reports ``skipped`` and ``nan_run`` (consecutive skips). Reading them blocks on the
device, so the guard reads step n's values only after step n+1 has been dispatched: the host
never waits on the step it just queued. Each skip is logged with the batch's provenance (the data
iterator state before that batch, which reproduces it); ``train.max_nan_skips`` consecutive skips
stop the run (0 = never).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


def max_nan_skips(config) -> int:
  v = config.train.get("max_nan_skips", 0)
  if not isinstance(v, int) or isinstance(v, bool) or v < 0:
    raise ValueError(f"train.max_nan_skips = {v!r}: must be an int >= 0 (0 = never stop)")
  return v


class NanGuard:

  def __init__(self, config):
    self.limit = max_nan_skips(config)
    self.pending = None  # (step, skipped, nan_run, provenance) of the newest step
    self.skipped_steps: list[int] = []

  def push(self, step: int, metrics: dict[str, Any], provenance: str) -> str | None:
    """Queues ``step``'s guard outputs (popped from ``metrics``); checks the previous step's.

    Returns a stop message once ``train.max_nan_skips`` consecutive steps were skipped.
    """
    previous = self.pending
    self.pending = (step, metrics["skipped"], metrics.pop("nan_run"), provenance)
    return self._check(previous)

  def drain(self) -> str | None:
    previous, self.pending = self.pending, None
    return self._check(previous)

  def _check(self, item) -> str | None:
    if item is None:
      return None
    step, skipped, run, provenance = item
    skipped, run = (int(x) for x in jax.device_get((skipped, run)))
    if not skipped:
      return None
    self.skipped_steps.append(step)
    logging.warning(
        "NaN guard: non-finite loss or gradient at step %d; update skipped (%d in a row, %d"
        " this run). Batch provenance: data iterator state before it = %s", step, run,
        len(self.skipped_steps), provenance)
    if self.limit and run >= self.limit:
      return (f"NaN guard: {run} consecutive non-finite steps (train.max_nan_skips ="
              f" {self.limit}), the last at step {step}; skipped steps this run:"
              f" {self.skipped_steps[-20:]}")
    return None
