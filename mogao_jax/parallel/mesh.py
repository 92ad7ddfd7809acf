"""The device mesh from config, and multi-process initialisation.

Config keys read (all under ``mesh`` and ``dist``):

* ``mesh.shape``: axis name -> size; one size may be -1 (= the rest of the devices). A
  ConfigDict sorts its keys, so a dict-valued shape is laid out in the canonical order
  ``AXIS_ORDER`` (outermost first; ``tensor`` innermost so it lands on the closest devices). A
  sequence of ``(name, size)`` pairs keeps its own order.
* ``mesh.axis_types`` (optional): "auto" (default; GSPMD propagation, what Flax Linen's logical
  constraints expect) or "explicit" (sharding in types).
* ``dist.num_processes`` > 1 (with ``dist.process_id`` and ``dist.coordinator_address``), or
  ``dist.auto`` (TPU pods, SLURM: JAX detects the cluster itself): ``jax.distributed.initialize``
  runs before any device is touched. The environment variable ``MOGAO_DISTRIBUTED=1`` does the
  same as ``dist.auto`` for configs without a ``dist`` section (see ``config_args.dist_config``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from absl import logging
import jax
from jax.sharding import AxisType, Mesh

# Outermost to innermost. The innermost axes get the fastest interconnect.
AXIS_ORDER = ("data", "fsdp", "sequence", "expert", "tensor")

_AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}


def _ordered_axes(shape: Any) -> list[tuple[str, int]]:
  """(name, size) pairs in mesh order, from a dict/ConfigDict or a sequence of pairs."""
  if hasattr(shape, "items"):
    items = dict(shape.items())
    known = [a for a in AXIS_ORDER if a in items]
    rest = sorted(a for a in items if a not in AXIS_ORDER)
    return [(a, items[a]) for a in known + rest]
  try:
    return [(str(name), size) for name, size in shape]
  except (TypeError, ValueError) as e:
    raise ValueError(f"mesh.shape must map axis names to sizes, got {shape!r}") from e


def resolve_mesh_shape(shape: Any, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Axis names and sizes with any -1 filled in; errors name ``mesh.shape`` and the numbers."""
  axes = _ordered_axes(shape)
  if not axes:
    raise ValueError("mesh.shape is empty: name at least one mesh axis, e.g. {'data': -1}")
  names = tuple(a for a, _ in axes)
  if len(set(names)) != len(names):
    raise ValueError(f"mesh.shape names an axis twice: {names}")
  for name, size in axes:
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"mesh.shape.{name} = {size!r}: sizes must be positive ints or -1")
  wild = [a for a, s in axes if s == -1]
  if len(wild) > 1:
    raise ValueError(f"mesh.shape: only one axis may be -1, got {wild} in {dict(axes)}")
  fixed = math.prod(s for _, s in axes if s != -1)
  if wild:
    if num_devices % fixed:
      raise ValueError(
          f"mesh.shape {dict(axes)}: the fixed axes multiply to {fixed}, which does not divide"
          f" the {num_devices} devices, so mesh.shape.{wild[0]} = -1 cannot be filled")
    axes = [(a, num_devices // fixed if s == -1 else s) for a, s in axes]
  elif fixed != num_devices:
    raise ValueError(
        f"mesh.shape {dict(axes)} multiplies to {fixed} devices, but there are {num_devices};"
        " make the sizes multiply to the device count or set one to -1")
  return names, tuple(s for _, s in axes)


def make_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over all devices (of all processes) shaped by ``config.mesh.shape``."""
  devices = list(jax.devices()) if devices is None else list(devices)
  names, sizes = resolve_mesh_shape(config.mesh.shape, len(devices))
  kind = config.mesh.get("axis_types", "auto")
  if kind not in _AXIS_TYPES:
    raise ValueError(f"mesh.axis_types = {kind!r}; expected one of {sorted(_AXIS_TYPES)}")
  axis_types = (_AXIS_TYPES[kind],) * len(names)
  mesh = jax.make_mesh(sizes, names, axis_types, devices=devices)
  logging.info("mesh: %s over %d devices (%s)", dict(zip(names, sizes)), len(devices),
               devices[0].platform)
  return mesh


def maybe_initialize_distributed(config) -> bool:
  """Runs ``jax.distributed.initialize`` when ``config.dist`` asks for it; True if it ran.

  Must run before the first JAX call that touches devices. Single-process runs
  (``dist.num_processes`` 1, no ``dist.auto``, no ``MOGAO_DISTRIBUTED=1``) are left alone.
  """
  dist = config.get("dist", None) or {}
  n = dist.get("num_processes", 1)
  auto = dist.get("auto", False) or os.environ.get("MOGAO_DISTRIBUTED", "") == "1"
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"dist.num_processes = {n!r}: must be a positive int")
  if n == 1 and not auto:
    return False
  if jax.distributed.is_initialized():
    return False
  kwargs = {}
  if n > 1:
    pid = dist.get("process_id", 0)
    if not 0 <= pid < n:
      raise ValueError(f"dist.process_id = {pid!r}: must be in [0, dist.num_processes = {n})")
    kwargs = dict(coordinator_address=dist.get("coordinator_address") or None,
                  num_processes=n, process_id=pid)
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
