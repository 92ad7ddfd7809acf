"""Checkpoints: orbax CheckpointManager in ``<workdir>/checkpoints``.

One checkpoint step holds three items:

* ``state``: the TrainState (params, optimizer state, step, RNG), restored straight into the
  target shardings (so a run may resume on a different mesh);
* ``data``: the data iterators' states, one per process (each process reads its own shard);
* ``config``: the resolved config; a restore into a different ``model`` section fails naming
  the differing keys rather than with a shape error deep inside orbax.

Config keys read: ``train.keep_checkpoints`` (max checkpoints kept; 0 or None = all).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")
# Config sections that must match for a checkpoint to load into the current model.
MUST_MATCH = ("model",)


def _jsonable(tree: Any) -> Any:
  """Plain JSON types (tuples -> lists), as the checkpoint will read back."""
  return json.loads(json.dumps(tree))


def config_to_json(config) -> dict[str, Any]:
  return _jsonable(config.to_dict())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_diff(saved: dict[str, Any], current: dict[str, Any],
                sections: tuple[str, ...] = MUST_MATCH) -> list[str]:
  """'key: saved -> current' for every differing key of the given sections."""
  a = _flat({s: saved.get(s, {}) for s in sections})
  b = _flat({s: current.get(s, {}) for s in sections})
  missing = object()
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def _gather_json(value: Any) -> list[Any]:
  """Every process's JSON value, in process order (identity on one process)."""
  if jax.process_count() == 1:
    return [_jsonable(value)]
  raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
  n = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
  padded = np.zeros((n,), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)  # [num_processes, n]
  return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in np.asarray(rows)]


class Checkpointer:
  """Save / restore TrainState + data iterator state + config under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, config):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    keep = config.train.get("keep_checkpoints", None)
    if keep is not None and (not isinstance(keep, int) or keep < 0):
      raise ValueError(f"train.keep_checkpoints = {keep!r}: must be an int >= 0 (0 = keep all)")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, config, *, force: bool = True) -> bool:
    """Starts an async save (every process must call it); returns whether one started."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"processes": _gather_json(data_state)}),
        config=ocp.args.JsonSave(config_to_json(config)),
    )
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def saved_config(self, step: int) -> dict[str, Any]:
    args = ocp.args.Composite(config=ocp.args.JsonRestore())
    return self.manager.restore(step, args=args)["config"]

  def check_compatible(self, step: int, config) -> None:
    """Raises ValueError naming the model keys that differ from the checkpoint's config."""
    diff = config_diff(self.saved_config(step), config_to_json(config))
    if diff:
      raise ValueError(
          f"checkpoint {self.directory} step {step} was written by a different model config;"
          f" differing keys (checkpoint -> current): {'; '.join(diff)}. Use a fresh --workdir"
          " or the checkpoint's config.")

  def restore(self, step: int, abstract_state: Any, config=None) -> tuple[Any, Any]:
    """(state, this process's data state). ``abstract_state``: ShapeDtypeStructs + shardings."""
    if config is not None:
      self.check_compatible(step, config)
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
    )
    out = self.manager.restore(step, args=args)
    per_process = out["data"]["processes"]
    if len(per_process) != jax.process_count():
      raise ValueError(
          f"checkpoint step {step} holds data states of {len(per_process)} processes, but this"
          f" run has {jax.process_count()}; data iterator state cannot be mapped")
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return out["state"], per_process[jax.process_index()]

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``tree`` (arrays or ShapeDtypeStructs) placed on ``shardings``."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
