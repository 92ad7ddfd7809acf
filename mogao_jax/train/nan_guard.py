"""Host side of the NaN/Inf guard (the skip itself happens inside the jitted step).

The step reports ``skipped`` and ``nan_run`` (consecutive skips). Reading them blocks on the
device, so the guard reads step n's values only after step n+1 has been dispatched: the host
never waits on the step it just queued. Each skip is logged with the batch's provenance (the data
iterator state before that batch, which reproduces it); ``train.max_nan_skips`` consecutive skips
stop the run (0 = never), and so does a run in which every step was skipped, however short:
it applied no update, so it must not end as a success.

Skipped steps never replace good history: the loop does not save a step inside a streak of
skips (``in_streak``: the newest checked step was skipped), not even the final one, and a run
that ends or is stopped (max_nan_skips, SIGTERM) inside a streak raises ``NonFiniteError``
(exit non-zero); the last checkpoint before the streak stays the newest.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


def max_nan_skips(config) -> int:
  """``train.max_nan_skips`` (0 = never stop; its range: config_schema)."""
  return int(config.train.get("max_nan_skips", 0))


class NanGuard:

  def __init__(self, config):
    self.limit = max_nan_skips(config)
    self.pending = None  # (step, skipped, nan_run, provenance) of the newest step
    self.skipped_steps: list[int] = []
    self.first_provenance = None  # of the first skipped batch of this run
    self.streak_start = None  # the first step of the current run of skips (None: not in one)

  @property
  def in_streak(self) -> bool:
    return self.streak_start is not None

  def push(self, step: int, metrics: dict[str, Any], provenance: str) -> str | None:
    """Queues ``step``'s guard outputs (popped from ``metrics``); checks the previous step's.

    Returns a stop message once ``train.max_nan_skips`` consecutive steps were skipped.
    """
    previous = self.pending
    self.pending = (step, metrics["skipped"], metrics.pop("nan_run"), provenance)
    return self._check(previous)

  def all_skipped(self, steps_run: int) -> str | None:
    """A stop message if every one of this run's ``steps_run`` steps was skipped (call after
    ``drain``)."""
    if not steps_run or len(self.skipped_steps) < steps_run:
      return None
    return (f"NaN guard: every step of this run ({steps_run}, steps"
            f" {self.skipped_steps[0]}-{self.skipped_steps[-1]}) was non-finite and skipped, so"
            " no update was applied. The first skipped batch's provenance (data iterator state"
            f" before it): {self.first_provenance}")

  def streak_end(self, last_saved: int | None) -> str | None:
    """A stop message if the run ended inside a streak of skips (call after ``drain``)."""
    if not self.in_streak:
      return None
    return (f"NaN guard: the run ended inside a streak of non-finite, skipped steps (steps"
            f" {self.streak_start}-{self.skipped_steps[-1]}); they were not saved over the last"
            f" good checkpoint (step {last_saved})")

  def drain(self) -> str | None:
    """Checks the newest step now (blocks on it)."""
    previous, self.pending = self.pending, None
    return self._check(previous)

  def _check(self, item) -> str | None:
    if item is None:
      return None
    step, skipped, run, provenance = item
    skipped, run = (int(x) for x in jax.device_get((skipped, run)))
    if not skipped:
      self.streak_start = None
      return None
    self.streak_start = self.streak_start or step
    self.skipped_steps.append(step)
    self.first_provenance = self.first_provenance or provenance
    logging.warning(
        "NaN guard: non-finite loss or gradient at step %d; update skipped (%d in a row, %d"
        " this run). Batch provenance: data iterator state before it = %s", step, run,
        len(self.skipped_steps), provenance)
    if self.limit and run >= self.limit:
      return (f"NaN guard: {run} consecutive non-finite steps (train.max_nan_skips ="
              f" {self.limit}), the last at step {step}; skipped steps this run:"
              f" {self.skipped_steps[-20:]}")
    return None
