"""The optimizer: clip -> AdamW (decay on matrices only), warmup + cosine schedule.

Config keys read: ``optim.lr``, ``optim.warmup_steps``, ``optim.min_lr_ratio``,
``optim.weight_decay``, ``optim.b1``, ``optim.b2``, ``optim.clip_norm`` (0 or None = no clip),
optional ``optim.eps`` (default 1e-8), and ``train.steps`` (the schedule's length).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax


def _check(ok: bool, key: str, value: Any, why: str) -> None:
  if not ok:
    raise ValueError(f"{key} = {value!r}: {why}")


def validate(config) -> None:
  """The rule between keys (each key's own range: config_schema); errors name the key."""
  o, steps = config.optim, config.train.steps
  _check(o.warmup_steps < steps, "optim.warmup_steps", o.warmup_steps,
         f"must be < train.steps = {steps}")


def make_schedule(config) -> optax.Schedule:
  """Linear warmup 0 -> lr over warmup_steps, then cosine to min_lr_ratio * lr at train.steps."""
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=o.lr,
      warmup_steps=o.warmup_steps,
      decay_steps=config.train.steps,  # includes the warmup in optax's convention
      end_value=o.lr * o.min_lr_ratio,
  )


def decay_mask(params: Any) -> Any:
  """True for params that get weight decay: matrices and up (not norms' scales, not biases).

  Stacked (scanned) layers add a leading axis, so a scanned bias is 2-D; its name tells it
  apart: leaves named 'bias' or 'scale' never decay.
  """
  def keep(path, p) -> bool:
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    names = [n for n in names if n != "value"]  # flax's nn.Partitioned box adds a 'value' key
    return p.ndim >= 2 and (not names or names[-1] not in ("bias", "scale"))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """(tx, schedule). The schedule is also returned for logging the learning rate."""
  validate(config)
  o = config.optim
  schedule = make_schedule(config)
  parts = []
  if o.get("clip_norm", None):
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8),
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
