"""The optimizer: clip -> AdamW (decay on matrices only), warmup + cosine schedule.

Config keys read: ``optim.lr``, ``optim.warmup_steps``, ``optim.min_lr_ratio``,
``optim.weight_decay``, ``optim.b1``, ``optim.b2``, ``optim.clip_norm`` (0 or None = no clip),
optional ``optim.eps`` (default 1e-8), and ``train.steps`` (the schedule's length).

Per-part learning rates (as BAGEL / LLaVA-style fine-tuning recipes): optional
``optim.lr_scale`` maps a part name of ``PARTS`` to a multiplier of the schedule; 0 freezes the
part (optax.set_to_zero: no Adam state is kept for it and its gradient is dropped before the
norm is clipped). Parts it does not name train at 1. Unset (or all 1): the plain optimizer, the
same state tree as before the key existed.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import optax

# Model parts by parameter path (Mogao's top-level names, model/mogao.py; "/"-joined paths,
# the first matching pattern wins). "vision" is the rest: the vision pathway's layers, its
# input / head / norm, the timestep embedding and the adaLN tables, i.e. what Mogao adds to
# the LM. The VAE is not a parameter of the state at all: it is always frozen (model/codec.py).
PARTS = (
    ("vit", r"vit/"),  # the understanding tower (SigLIP or the tiny ViT)
    ("connector", r"connector/"),  # ViT features -> LM width
    ("text", r"(embed_tokens|lm_head|txt_norm)/|stack/layers[^/]*/txt/"),  # the pretrained LM
    ("vision", r""),
)
FROZEN = "frozen"


def _path_names(path) -> list[str]:
  names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
  return [n for n in names if n != "value"]  # flax's nn.Partitioned box adds a 'value' key


def part_of(path) -> str:
  """The PARTS name of a parameter path (a jax key path)."""
  joined = "/".join(_path_names(path)) + "/"
  return next(name for name, pattern in PARTS if re.match(pattern, joined))


def lr_scales(config) -> dict[str, float]:
  """optim.lr_scale as {part: multiplier} over every part (1 where unnamed); ValueError
  naming a key that is not a part."""
  given = dict(config.optim.get("lr_scale", None) or {})
  names = [name for name, _ in PARTS]
  unknown = sorted(set(given) - set(names))
  if unknown:
    raise ValueError(f"optim.lr_scale: unknown part(s) {unknown}; the parts are {names} "
                     "(train/optimizer.py PARTS: which parameter paths each holds)")
  return {name: float(given.get(name, 1.0)) for name in names}


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
    names = _path_names(path)
    return p.ndim >= 2 and (not names or names[-1] not in ("bias", "scale"))
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """(tx, schedule). The schedule is also returned for logging the learning rate."""
  validate(config)
  o = config.optim
  schedule = make_schedule(config)
  scales = lr_scales(config)
  adamw = lambda lr: optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8),  # noqa: E731
                                 weight_decay=o.weight_decay, mask=decay_mask)
  clip = [optax.clip_by_global_norm(o.clip_norm)] if o.get("clip_norm", None) else []
  if all(v == 1.0 for v in scales.values()):
    return optax.chain(*clip, adamw(schedule)), schedule
  groups = {FROZEN if v == 0 else name: v for name, v in scales.items()}
  txs = {name: (optax.set_to_zero() if name == FROZEN else
                adamw(lambda step, v=v: schedule(step) * v)) for name, v in groups.items()}
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: FROZEN if scales[part_of(path)] == 0 else part_of(path), params)
  # Frozen gradients are zeroed before the clip, so they do not count in the global norm.
  drop = optax.multi_transform({n: optax.set_to_zero() if n == FROZEN else optax.identity()
                                for n in groups}, labels)
  return optax.chain(drop, *clip, optax.multi_transform(txs, labels)), schedule
