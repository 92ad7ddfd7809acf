"""The KV cache: every layer's rotated keys/values plus the metadata the mask needs.

Slots of both streams share one cache: once a slot's K/V exist (after its own pathway's
projections and RoPE) nothing about it depends on its stream. A slot with segment 0 is empty
and invisible (masks.visibility wants matching segments > 0).
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from mogao_jax.model.config import ModelConfig

META = ("segment", "kind", "image", "pos")
# Logical axes of the cache's arrays: rows by the batch rule, K/V by kv heads as the
# attention's projections are, so each device holds the keys its own heads read.
_KV_AXES = (None, "batch", None, "kv_heads", None)
_META_AXES = ("batch", None, None)


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [depth, B, C, num_kv_heads, head_dim]
  v: jax.Array
  segment: jax.Array  # [B, C]; 0 = empty
  kind: jax.Array  # [B, C]
  image: jax.Array  # [B, C]
  pos: jax.Array  # [B, C, 3]

  @property
  def capacity(self) -> int:
    return self.segment.shape[1]

  def meta(self) -> dict[str, jax.Array]:
    return {f: getattr(self, f) for f in META}

  def write(self, dest_BL, new_kv, meta_BL: dict) -> "KVCache":
    """Stores new slots at cache index dest_BL [B, L]; index >= capacity drops the slot."""
    b = jnp.arange(dest_BL.shape[0])[:, None]
    put = lambda old, new: old.at[b, dest_BL].set(new.astype(old.dtype), mode="drop")  # noqa
    put_kv = lambda old, new: old.at[:, b, dest_BL].set(new.astype(old.dtype), mode="drop")  # noqa
    return self.replace(k=put_kv(self.k, new_kv[0]), v=put_kv(self.v, new_kv[1]),
                        **{f: put(getattr(self, f), meta_BL[f]) for f in META})


def empty(cfg: ModelConfig, batch: int, capacity: int) -> KVCache:
  kv = jnp.zeros((cfg.depth, batch, capacity, cfg.num_kv_heads, cfg.head_dim), cfg.compute_dtype)
  z = jnp.zeros((batch, capacity), jnp.int32)
  return KVCache(k=kv, v=kv, segment=z, kind=z, image=z,
                 pos=jnp.zeros((batch, capacity, 3), jnp.int32))


def shardings(cache: KVCache, mesh, rules) -> KVCache:
  """A KVCache of NamedShardings on ``mesh`` from the logical rules; a mesh axis that does not
  divide its dimension (a batch of 1, one kv head on a tensor axis of 2) is left replicated."""
  def one(x, axes):
    spec = nn.logical_to_mesh_axes(axes[:x.ndim], list(rules))
    keep = []
    for dim, target in zip(x.shape, spec):
      names = () if target is None else (target,) if isinstance(target, str) else tuple(target)
      keep.append(target if dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*keep))
  return KVCache(k=one(cache.k, _KV_AXES), v=one(cache.v, _KV_AXES),
                 **{f: one(getattr(cache, f), _META_AXES) for f in META})
