"""The sharding report: every parameter's logical axes, mesh axes and bytes per device, and a
fail-fast check on how much of the parameter memory stays replicated (MaxText's "sharding
tolerance": a rule typo that leaves the embeddings unsharded should stop a pod job at start-up,
not OOM it an hour later).

Config key: ``mesh.max_replicated_fraction`` (default 1.0 = no check): the largest allowed
fraction of parameter bytes that is fully replicated while the mesh has more than one device.
"""

from __future__ import annotations

import math

import jax
import numpy as np


def _path(p) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p)


def _ways(axes, mesh) -> int:
  """Into how many pieces a dimension mapped to `axes` (None, a name or names) is split."""
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[a] for a in names)


def parameter_rows(abstract_params, logical_specs, shardings) -> list[dict]:
  """One row per parameter: path, shape, logical axes, mesh axes, global and per-device bytes."""
  flat_a = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_l = jax.tree_util.tree_leaves(logical_specs, is_leaf=lambda x: x is None or
                                     isinstance(x, jax.sharding.PartitionSpec))
  flat_s = jax.tree_util.tree_leaves(shardings)
  rows = []
  for (path, a), logical, sh in zip(flat_a, flat_l, flat_s):
    nbytes = math.prod(a.shape) * np.dtype(a.dtype).itemsize
    # ceil, not NamedSharding.shard_shape: that raises on the uneven splits check_divisible names
    spec = tuple(sh.spec) + (None,) * (len(a.shape) - len(sh.spec))  # trailing dims: whole
    per_dev = math.prod(-(-n // _ways(axes, sh.mesh)) for n, axes in zip(a.shape, spec))
    per_dev *= np.dtype(a.dtype).itemsize
    rows.append(dict(path=_path(path), shape=tuple(a.shape), logical=tuple(logical or ()),
                     mesh=spec, bytes=nbytes, bytes_per_device=per_dev))
  return rows


def replicated_fraction(rows, num_devices: int) -> float:
  """Fraction of parameter bytes stored whole on every device (0 when there is one device)."""
  if num_devices <= 1:
    return 0.0
  total = sum(r["bytes"] for r in rows)
  rep = sum(r["bytes"] for r in rows if r["bytes_per_device"] == r["bytes"])
  return rep / max(total, 1)


def format_table(rows) -> str:
  head = f"{'parameter':<52} {'shape':<22} {'logical':<34} {'mesh':<26} {'MiB/dev':>9}"
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['path'][:52]:<52} {str(r['shape'])[:22]:<22} "
                 f"{str(r['logical'])[:34]:<34} {str(r['mesh'])[:26]:<26} "
                 f"{r['bytes_per_device'] / 2**20:>9.3f}")
  total = sum(r["bytes"] for r in rows)
  per_dev = sum(r["bytes_per_device"] for r in rows)
  lines.append(f"total {total / 2**20:.2f} MiB of parameters, {per_dev / 2**20:.2f} MiB per device")
  return "\n".join(lines)


def check_divisible(rows, mesh) -> None:
  """Every sharded dimension must split evenly over its mesh axes (e.g. num_heads over the
  `tensor` axis); raises ValueError naming the parameter, its logical axis and the numbers,
  instead of an XLA error at compile time."""
  for r in rows:
    logical_axes = r["logical"] + (None,) * len(r["shape"])
    for dim, (size, axes, logical) in enumerate(zip(r["shape"], r["mesh"], logical_axes)):
      ways = _ways(axes, mesh)
      if size % ways:
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        raise ValueError(
            f"parameter {r['path']} dim {dim} (logical {logical!r}) has size {size}, which does"
            f" not split over mesh axes {names} of size {ways}: change mesh.shape or the model"
            f" size, or map {logical!r} elsewhere in mesh.rules")


def check_replication(rows, num_devices: int, max_fraction: float) -> float:
  """Raises ValueError naming mesh.max_replicated_fraction and the biggest replicated params."""
  frac = replicated_fraction(rows, num_devices)
  if frac > max_fraction:
    worst = sorted((r for r in rows if r["bytes_per_device"] == r["bytes"]),
                   key=lambda r: -r["bytes"])[:5]
    names = ", ".join(f"{r['path']} {r['logical']}" for r in worst)
    raise ValueError(
        f"{frac:.1%} of parameter bytes are replicated on all {num_devices} devices, more than"
        f" mesh.max_replicated_fraction = {max_fraction}; largest replicated: {names}. Add a"
        " rule to mesh.rules for their logical axes, or raise the tolerance.")
  return frac
