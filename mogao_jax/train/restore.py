"""Read-only restores from a training workdir: its config, tokenizer and parameters.

The one path by which sampling, evaluation, export and ``init.params_from`` read another run's
weights. It restores only the ``params`` (or ``ema``) subtree of the checkpoint's ``state``
item, by orbax partial restore against the saved metadata: no model, optimizer or train state
is built, and a checkpoint of any optimizer config restores the same way.

A path may be a workdir, its ``checkpoints/`` directory, or one step directory.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mogao_jax.data import tokenizer as tokenizer_lib

WHICH = ("params", "ema", "auto")


class WorkdirError(FileNotFoundError):
  """A workdir (or checkpoint path) that holds no readable config, checkpoint or step."""


def without_traceback(main: Callable) -> Callable:
  """An entry point's ``main`` in which an unreadable workdir ends the process with the
  message alone (exit code 1): the user's mistake, not a bug, so no traceback."""
  @functools.wraps(main)
  def run(argv):
    try:
      return main(argv)
    except WorkdirError as e:
      sys.exit(f"error: {e}")
  return run  # auto: the EMA where the checkpoint has one, else params


def locate(path: str, what: str = "--workdir", step: int | None = None) -> tuple[str, int]:
  """(checkpoints dir, step): ``step``, the step of a step dir, or the newest complete one.
  Errors start with ``what`` (the flag or config key that named the path)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(name) if step is None else step
  if not os.path.isdir(path):
    raise WorkdirError(f"{what} = {path!r}: no such directory (or no checkpoints/ in it)")
  steps = ocp.path.step.checkpoint_steps(path)  # finalized steps only
  if not steps:
    raise WorkdirError(f"{what} = {path!r}: no complete checkpoint there")
  if step is not None and step not in steps:
    raise WorkdirError(f"{what} = {path!r}: no step {step} (steps: {sorted(steps)})")
  return path, max(steps) if step is None else step


def _reader(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler(),
                     "tokenizer": ocp.StandardCheckpointHandler()})


def saved_state_tree(directory: str, step: int) -> dict[str, Any]:
  """The metadata tree (shapes, dtypes) of a step's ``state`` item."""
  manager = _reader(directory)
  try:
    meta = manager.item_metadata(step)["state"]
  finally:
    manager.close()
  return getattr(meta, "tree", meta)


def restore_config(path: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
  """(the config saved with a checkpoint, its step)."""
  directory, step = locate(path, step=step)
  manager = _reader(directory)
  try:
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return ml_collections.ConfigDict(config["config"]), step


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, else the config saved with its newest checkpoint."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise WorkdirError(f"--workdir {workdir} has neither config.json nor a checkpoint")
  return restore_config(workdir)[0]


def load_tokenizer(workdir: str, step: int | None = None):
  """The workdir's tokenizer files (tokenizer.json + tokenizer_config.json, or tokenizer.model),
  else the tokenizer saved with a checkpoint."""
  files = tokenizer_lib.workdir_files(workdir)
  if files:
    return tokenizer_lib.from_files(files, f"--workdir {workdir}")
  directory, step = locate(workdir, step=step)
  if not os.path.isdir(os.path.join(directory, str(step), "tokenizer")):
    raise WorkdirError(f"--workdir {workdir} has no tokenizer file ({tokenizer_lib.MODEL_FILE} "
                       "or tokenizer.json) and its checkpoint holds no tokenizer")
  manager = _reader(directory)
  try:
    out = manager.restore(step, args=ocp.args.Composite(tokenizer=ocp.args.StandardRestore()))
  finally:
    manager.close()
  item = {k: bytes(np.asarray(v, np.uint8)) for k, v in out["tokenizer"].items()}
  return tokenizer_lib.from_files(tokenizer_lib.from_item(item), f"{directory}/{step}/tokenizer")


def restore_params(path: str, *, step: int | None = None, which: str = "params", like=None,
                   sharding=None, what: str = "--workdir") -> tuple[Any, int, str]:
  """(params, step, which restored) from a checkpoint, nothing else read.

  ``which``: "params", "ema" or "auto" (the EMA where there is one). ``like``: a tree of
  ShapeDtypeStructs with shardings, a subset of the saved leaves (partial restore: what
  ``init.params_from`` wants); default the whole saved subtree on ``sharding`` (default the
  first local device)."""
  if which not in WHICH:
    raise ValueError(f"params to restore must be one of {WHICH}, got {which!r}")
  directory, step = locate(path, what, step)
  tree = saved_state_tree(directory, step)
  if which == "auto":
    which = "ema" if tree.get("ema") is not None else "params"
  saved = tree.get(which)
  if saved is None:
    raise ValueError(f"{what}: {directory} step {step} holds no '{which}' (train.ema_decay was"
                     f" 0?); its state has {sorted(k for k, v in tree.items() if v is not None)}")
  if like is None:
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        saved)
  item = {which: like}
  manager = _reader(directory)
  try:
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  finally:
    manager.close()
  return out["state"][which], step, which
