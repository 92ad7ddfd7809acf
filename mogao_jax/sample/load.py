"""A training workdir -> (config, params, step, tokenizer) for sampling.

Everything is read through train/restore.py (params only, read-only; no optimizer built).
``load`` puts the params on one device; ``load_on_mesh`` restores them straight onto a device
mesh (the run's ``mesh.shape`` or an override) with the shardings training gives them, from
the same logical rules (parallel/rules.py, train/step.py's logical specs), so a model that does
not fit one chip samples and evaluates as it trained.
"""

from __future__ import annotations

import dataclasses
import math

from absl import logging
import jax
import ml_collections
import optax

from mogao_jax.data import batch as batch_lib
from mogao_jax.model.mogao import Mogao
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import restore
from mogao_jax.train import step as step_lib

SINGLE = "single"  # --mesh value: one device, no mesh (the old behaviour)
RUN = "run"  # --mesh value: the run's config.mesh.shape


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a sampler runs: a mesh and the logical rules of its params and activations."""
  mesh: jax.sharding.Mesh
  rules: rules_lib.Rules


def load(workdir: str, use_ema: bool = True, step: int | None = None):
  """(config, params, step, tokenizer) of the newest checkpoint (or ``step``), params on the
  first local device: the EMA where the state has one and ``use_ema`` (the usual choice)."""
  config = restore.load_config(workdir)
  params, step, which = restore.restore_params(workdir, step=step,
                                               which="auto" if use_ema else "params")
  _log(workdir, step, which, "one device")
  return config, params, step, restore.load_tokenizer(workdir, step)


def parse_mesh(value: str):
  """--mesh: "run", "single", or "axis=size,..." (one size may be -1) -> None (single),
  "run", or a mesh.shape as (name, size) pairs in the given order."""
  value = (value or RUN).strip()
  if value in (RUN, SINGLE):
    return None if value == SINGLE else RUN
  pairs = []
  for part in value.split(","):
    name, eq, size = part.partition("=")
    try:
      pairs.append((name.strip(), int(size)))
    except ValueError:
      eq = ""
    if not eq or not name.strip():
      raise ValueError(f"--mesh={value!r}: expected 'run', 'single' or axis=size pairs such "
                       "as 'data=1,fsdp=-1'")
  return tuple(pairs)


def with_mesh_shape(config, shape) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``mesh.shape`` has the axes of ``shape`` (pairs; "run": no
  change) set. The run's other axes keep their sizes (so its rules still find them), except
  that a -1 of the run's yields to a -1 of the override (one -1 at most)."""
  config = config.copy_and_resolve_references()
  if shape == RUN:
    return config
  merged = dict(mesh_lib._ordered_axes(config.mesh.shape))  # pylint: disable=protected-access
  given = dict(shape)
  if -1 in given.values():
    merged = {a: 1 if s == -1 else s for a, s in merged.items()}
  merged.update(given)
  with config.unlocked():  # canonical axis order, as the run's own mesh.shape (mesh.py)
    config.mesh.shape = ml_collections.ConfigDict(merged)
  return config


def placement_for(config) -> Placement:
  """The mesh of ``config.mesh.shape`` and its rules. Fixed sizes that multiply to fewer
  devices than there are take the first ones (sampling a small model on part of a host)."""
  devices = jax.devices()
  sizes = [s for _, s in mesh_lib._ordered_axes(config.mesh.shape)]  # pylint: disable=protected-access
  if -1 not in sizes and 0 < math.prod(sizes) < len(devices):
    devices = devices[:math.prod(sizes)]
  mesh = mesh_lib.make_mesh(config, devices=devices)
  return Placement(mesh, rules_lib.make_rules(config, mesh))


def param_shardings(config, placement: Placement):
  """The params' NamedShardings on the placement, as training lays them out."""
  model = Mogao.from_config(config)
  with rules_lib.activate(placement.mesh, placement.rules):
    specs = step_lib.state_logical_specs(config, model, optax.identity(),
                                         batch_lib.example_batch(config, 1)).params
  return rules_lib.logical_to_sharding(specs, placement.mesh, placement.rules)


def load_on_mesh(workdir: str, use_ema: bool = True, step: int | None = None,
                 mesh: str = RUN):
  """(config, params, step, tokenizer, placement): the params restored by orbax straight onto
  the mesh (``mesh``: see parse_mesh) with training's shardings; placement None = one device
  (``mesh="single"``), then the same as ``load``."""
  shape = parse_mesh(mesh)
  if shape is None:
    return (*load(workdir, use_ema, step), None)
  config = with_mesh_shape(restore.load_config(workdir), shape)
  placement = placement_for(config)
  shardings = param_shardings(config, placement)
  directory, step = restore.locate(workdir, step=step)
  saved = restore.saved_state_tree(directory, step)
  which = "ema" if use_ema and saved.get("ema") is not None else "params"
  try:
    like = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                        saved[which], shardings)
  except ValueError as e:  # the saved tree is not the config's model (an edited config.json)
    raise ValueError(f"--workdir {workdir} step {step}: the checkpoint's '{which}' tree differs"
                     " from the model of its config, so it cannot be laid out on the mesh; "
                     f"--mesh=single restores it as saved ({e})") from e
  params, step, which = restore.restore_params(workdir, step=step, which=which, like=like)
  _log(workdir, step, which, f"mesh {dict(placement.mesh.shape)}")
  return config, params, step, restore.load_tokenizer(workdir, step), placement


def _log(workdir, step, which, where):
  logging.info("sampling from %s step %d (%s params) on %s", workdir, step,
               "EMA" if which == "ema" else "raw", where)
