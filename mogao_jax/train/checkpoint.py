"""Checkpoints: orbax CheckpointManager in ``<workdir>/checkpoints``.

One checkpoint step ``<workdir>/checkpoints/<step>/`` holds four items:

* ``state``: the TrainState (step, params, optimizer state, RNG, EMA, NaN-guard counters),
  restored straight into the target shardings (so a run may resume on a different mesh);
* ``data``: the data iterators' states, one per process (each holds its data shards' states);
* ``config``: the resolved config; a restore into a different ``model`` section (or tokenizer
  settings) fails naming the differing keys rather than with a shape error deep inside orbax;
* ``tokenizer``: the sentencepiece model bytes, so a checkpoint is self-contained.

Saves are asynchronous: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames it
when complete (plus ``commit_success.txt``), so a save killed half-way is never listed as a step.
A listed step that still fails to read (truncated by hand, disk trouble) is moved aside to
``unreadable-<step>-<time>`` and the previous step is used (``restore_latest``).

Config keys read: ``train.keep_checkpoints`` (keep the last N; 0 or None = all),
``train.keep_every`` (also keep every K-th step for good; 0 = off), ``train.async_checkpointing``
(default True).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mogao_jax.train import compat
from mogao_jax.train.compat import config_diff, named_shapes, shape_diff  # noqa: F401

ITEMS = ("state", "data", "config", "tokenizer")
MUST_MATCH = compat.MUST_MATCH
# Keys whose change alters the TrainState's structure, named when the structure differs.
STRUCTURE_KEYS = ("optim", "train.ema_decay")


def _jsonable(tree: Any) -> Any:
  """Plain JSON types (tuples -> lists), as the checkpoint will read back."""
  return json.loads(json.dumps(tree))


def config_to_json(config) -> dict[str, Any]:
  return _jsonable(config.to_dict())


def gather_json(value: Any) -> list[Any]:
  """Every process's JSON value, in process order (identity on one process)."""
  if jax.process_count() == 1:
    return [_jsonable(value)]
  raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
  n = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
  padded = np.zeros((n,), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)  # [num_processes, n]
  return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in np.asarray(rows)]


def _nonneg_int(config, key: str) -> int:
  return config.train.get(key, None) or 0  # 0 = off; the range: config_schema


def preservation_policy(config):
  """Keep the last ``train.keep_checkpoints`` steps plus every ``train.keep_every``-th."""
  keep, every = _nonneg_int(config, "keep_checkpoints"), _nonneg_int(config, "keep_every")
  chosen = [policies.LatestN(n=keep or None)]
  if every:
    chosen.append(policies.EveryNSteps(interval_steps=every))
  return policies.AnyPreservationPolicy(chosen)


def _handlers() -> dict[str, Any]:
  return dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
              config=ocp.JsonCheckpointHandler(), tokenizer=ocp.StandardCheckpointHandler())


_CPU_HANDLER_SET = False


def _no_replica_slicing_on_cpu() -> None:
  """On CPU, save each replicated array from one replica, unsliced.

  Orbax's default "replica-parallel" save splits a replicated array into slices written by
  different replicas (right for a pod: parallel writes). Each slice is a jitted op, compiled
  per shape: on CPU (simulated devices) the first save paid ~100 tiny compiles (seconds) and
  parallel writes buy nothing.
  """
  global _CPU_HANDLER_SET
  if jax.default_backend() == "cpu" and not _CPU_HANDLER_SET:
    _CPU_HANDLER_SET = True
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Save / restore TrainState + data iterator state + config + tokenizer."""

  def __init__(self, workdir: str, config):
    _no_replica_slicing_on_cpu()
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy(config), create=True,
        cleanup_tmp_directories=True,  # half-written saves of a killed run
        enable_async_checkpointing=bool(config.train.get("async_checkpointing", True)))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, config, *,
           tokenizer_proto: bytes | None = None, force: bool = True) -> bool:
    """Starts an async save (every process must call it); returns whether one started."""
    items = dict(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"processes": gather_json(data_state)}),
        config=ocp.args.JsonSave(config_to_json(config)),
    )
    if tokenizer_proto is not None:
      items["tokenizer"] = ocp.args.StandardSave(
          {"model_proto": np.frombuffer(tokenizer_proto, np.uint8)})
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def saved_config(self, step: int) -> dict[str, Any]:
    args = ocp.args.Composite(config=ocp.args.JsonRestore())
    return self.manager.restore(step, args=args)["config"]

  def tokenizer_proto(self, step: int) -> bytes | None:
    """The sentencepiece model saved with ``step`` (None for a checkpoint without one)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "tokenizer")):
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(tokenizer=ocp.args.StandardRestore()))
    return bytes(np.asarray(out["tokenizer"]["model_proto"], np.uint8))

  def check_compatible(self, step: int, config, abstract_state: Any = None) -> None:
    """Raises ValueError naming what differs: MUST_MATCH config keys, then state leaves."""
    saved = self.saved_config(step)
    where = f"checkpoint {self.directory} step {step}"
    diff = config_diff(saved, config_to_json(config))
    if diff:
      raise ValueError(
          f"{where} was written by a different model config; differing keys (checkpoint ->"
          f" current): {'; '.join(diff)}. Use a fresh --workdir or the checkpoint's config.")
    if abstract_state is None:
      return
    leaves = shape_diff(self.saved_shapes(step), named_shapes(abstract_state))
    if leaves:
      keys = config_diff(saved, config_to_json(config), STRUCTURE_KEYS)
      raise ValueError(
          f"{where} holds a differently shaped train state: {'; '.join(leaves[:12])}"
          f"{' ...' if len(leaves) > 12 else ''}. Config keys that differ (checkpoint ->"
          f" current): {'; '.join(keys) or 'none of ' + ', '.join(STRUCTURE_KEYS)}.")

  def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """Leaf name -> shape of the saved TrainState (from metadata; raises if there is none)."""
    meta = self.manager.item_metadata(step)["state"]
    shapes = named_shapes(getattr(meta, "tree", meta)) if meta is not None else {}
    if not shapes:
      raise ValueError(f"checkpoint step {step}: the state item has no readable metadata")
    return shapes

  def restore(self, step: int, abstract_state: Any, config=None) -> tuple[Any, Any]:
    """(state, every saving process's data state, a list in process order).
    ``abstract_state``: ShapeDtypeStructs + shardings."""
    if config is not None:
      self.check_compatible(step, config, abstract_state)
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
    )
    out = self.manager.restore(step, args=args)
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    # Every process's data state: the data shards they held are dealt out again over this
    # run's processes (data/shards.py), whatever the process count that saved them.
    return out["state"], out["data"]["processes"]

  def restore_latest(self, abstract_state: Any, config) -> tuple[int, Any, Any] | None:
    """(step, state, data state) of the newest READABLE step, or None if there is none.

    An incompatible config raises (an older step would not fit either); an unreadable step is
    moved aside with a warning and the next older one is tried.
    """
    errors = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        self.saved_config(step)  # unreadable -> except below; incompatible -> raise
        self.saved_shapes(step)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(self._set_aside(step, e))
        continue
      self.check_compatible(step, config, abstract_state)
      try:
        return (step,) + self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(self._set_aside(step, e))
    if errors:
      raise RuntimeError(
          f"no readable checkpoint in {self.directory}: {'; '.join(errors)}. The unreadable"
          " steps were moved aside; rerun to start from scratch, or restore them by hand.")
    return None

  def _set_aside(self, step: int, error: Exception) -> str:
    """Renames an unreadable step dir (so later saves of that step can proceed)."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"unreadable-{step}-{int(time.time())}")
    msg = f"step {step} ({type(error).__name__}: {str(error)[:300]})"
    logging.warning("checkpoint: %s is unreadable: %s; moving it to %s and trying an older"
                    " step", src, msg, dst)
    if jax.process_index() == 0 and os.path.isdir(src):
      os.rename(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self.manager.reload()
    return msg

  def sync_tokenizer(self, path: str) -> None:
    """Writes the newest checkpoint's tokenizer to ``path`` if absent; refuses a different one."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        proto = self.tokenizer_proto(step)
      except Exception:  # pylint: disable=broad-except  (unreadable: restore_latest handles it)
        continue
      if proto is None:
        return
      if not os.path.exists(path):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
          f.write(proto)
        os.replace(tmp, path)
        logging.info("checkpoint: tokenizer restored from step %d to %s", step, path)
      else:
        with open(path, "rb") as f:
          if f.read() != proto:
            raise ValueError(f"{path} differs from the tokenizer saved in checkpoint step {step}"
                             f" of {self.directory}; delete {path} to use the checkpoint's")
      return

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
