"""What must match between a checkpoint and the current run: config keys and state leaves."""

from __future__ import annotations

from typing import Any

import jax

from mogao_jax import trees

# Config keys (sections or dotted keys) that must match for a checkpoint to load.
MUST_MATCH = ("model", "data.vocab_size", "data.patch_size")

# Keys a resume may change freely: they do not change what is trained (cadence of logs, saves,
# samples and evals; the mesh and process layout, which the restore re-shards; host-side
# performance knobs; init.*, read only by a fresh init). Every other differing key changes the
# run (steps, batch, optimizer and schedule, data, seed, loss, flow...) and a resume refuses it
# unless train.allow_config_change = True. Sections or dotted keys, as MUST_MATCH.
FREE_ON_RESUME = (
    "train.log_every", "train.ckpt_every", "train.keep_checkpoints", "train.keep_every",
    "train.async_checkpointing", "train.sample_every", "train.sample_n", "train.sample_steps",
    "train.eval_every", "train.eval_n", "train.eval_kinds", "train.max_nan_skips",
    "train.offload_opt_state", "train.allow_config_change", "mesh", "dist", "dry_run",
    "dry_run_topology", "data.num_workers", "data.read_threads", "init")


def config_diff(saved: dict[str, Any], current: dict[str, Any],
                sections: tuple[str, ...] = MUST_MATCH) -> list[str]:
  """'key: saved -> current' for every differing key under the given sections / dotted keys."""
  def pick(cfg):
    return {k: v for k, v in trees.flatten(cfg).items()
            if any(k == s or k.startswith(s + ".") for s in sections)}
  a, b = pick(saved), pick(current)
  missing = object()
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def run_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'key: saved -> current' for every differing key that changes the run (all keys but
  FREE_ON_RESUME and MUST_MATCH, which is checked first and cannot be allowed)."""
  def under(k, sections):
    return any(k == s or k.startswith(s + ".") for s in sections)
  keys = set(trees.flatten(saved)) | set(trees.flatten(current))
  tops = sorted({k for k in keys if not under(k, FREE_ON_RESUME + MUST_MATCH)})
  return config_diff(saved, current, tuple(tops))


def leaf_name(path) -> str:
  """'params.stack.attn.q.kernel' from a jax key path (orbax names leaves the same way)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return ".".join(parts)


def _stored_shape(x) -> tuple[int, ...]:
  """A typed PRNG key is stored as its key data (e.g. () key<fry> -> (2,) uint32)."""
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, x).shape)
  return tuple(x.shape)


def named_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {leaf_name(p): _stored_shape(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_diff(saved: dict[str, tuple], current: dict[str, tuple]) -> list[str]:
  """Human-readable differences between two name -> shape maps."""
  out = [f"{k}: only in the checkpoint" for k in sorted(set(saved) - set(current))]
  out += [f"{k}: not in the checkpoint" for k in sorted(set(current) - set(saved))]
  out += [f"{k}: shape {saved[k]} in the checkpoint, {current[k]} now"
          for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
  return out
