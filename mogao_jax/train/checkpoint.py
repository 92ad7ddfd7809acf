"""Checkpoints: orbax CheckpointManager in ``<workdir>/checkpoints``.

One checkpoint step ``<workdir>/checkpoints/<step>/`` holds four items:

* ``state``: the TrainState (step, params, optimizer state, RNG, EMA, NaN-guard counters),
  restored straight into the target shardings (so a run may resume on a different mesh);
* ``data``: the data iterators' states, one per process (each holds its data shards' states);
* ``config``: the resolved config; a restore into a different ``model`` section (or tokenizer
  settings) fails naming the differing keys rather than with a shape error deep inside orbax;
* ``tokenizer``: the tokenizer's bytes (a sentencepiece model, or a tokenizer.json + its
  tokenizer_config.json: data/tokenizer.py `to_item`), so a checkpoint is self-contained;

plus ``integrity.json`` (train/integrity.py): size and sha256 of every file, written in orbax's
background thread before the commit, verified on restore.

Saves are asynchronous: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames it
when complete, so a save killed half-way is never listed as a step. Restore never destroys: a
listed step is moved aside to ``unreadable-<step>-<time>`` only when its manifest PROVES it
damaged (a file missing, truncated or changed), and the next older step is used, with a log line.
A step this run cannot take (another model, state structure, run config or process layout) or
that fails to read although it verifies is a ``ResumeError`` naming what differs, every step left
in place.

Config keys read: ``train.keep_checkpoints`` (keep the last N; 0 or None = all),
``train.keep_every`` (also keep every K-th step for good; 0 = off), ``train.async_checkpointing``
(default True), ``train.allow_config_change`` (resume with changed run keys; default False).
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

from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.train import compat
from mogao_jax.train import integrity
from mogao_jax.train.compat import config_diff, named_shapes, shape_diff  # noqa: F401

ITEMS = ("state", "data", "config", "tokenizer")
MUST_MATCH = compat.MUST_MATCH
# Keys whose change alters the TrainState's structure, named when the structure differs.
STRUCTURE_KEYS = ("optim", "train.ema_decay")


class ResumeError(ValueError):
  """A checkpoint this run cannot take as configured; nothing was moved. The entry point
  prints the message alone."""


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


def from_process0(value: Any) -> Any:
  """Process 0's JSON value, on every process."""
  return gather_json(value)[0]


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
    self.is_async = bool(config.train.get("async_checkpointing", True))
    # The manifest is hashed in orbax's background thread, after the items are finalized and
    # before the commit rename: off the step's critical path.
    async_options = ocp.AsyncOptions(post_finalization_callback=self._manifest_in_flight)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy(config), create=True,
        cleanup_tmp_directories=True,  # half-written saves of a killed run
        enable_async_checkpointing=self.is_async,
        async_options=async_options if self.is_async else None)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())
    self._checks: dict[int, str | None] = {}  # step -> integrity.check result
    self.set_aside: list[str] = []  # the steps proven damaged this session, with why
    self.config_changes: list[str] = []  # run keys changed on resume (allowed by the config)

  def _manifest_in_flight(self) -> None:
    """orbax's post-finalization callback: the manifest of the save about to be committed."""
    if jax.process_index() != 0:
      return
    for name in os.listdir(self.directory):
      path = os.path.join(self.directory, name)
      if ".orbax-checkpoint-tmp" in name and not os.path.exists(
          os.path.join(path, integrity.MANIFEST)):
        integrity.write(path)  # an error here fails the save: better than an unverifiable one

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, config, *,
           tokenizer_files: dict[str, bytes] | None = None, force: bool = True) -> bool:
    """Starts an async save (every process must call it); returns whether one started."""
    items = dict(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"processes": gather_json(data_state)}),
        config=ocp.args.JsonSave(config_to_json(config)),
    )
    if tokenizer_files:
      items["tokenizer"] = ocp.args.StandardSave(
          {k: np.frombuffer(v, np.uint8) for k, v in tokenizer_lib.to_item(tokenizer_files).items()})
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
      if not self.is_async and jax.process_index() == 0:  # the save has committed already
        integrity.write(os.path.join(self.directory, str(step)))
    return saved

  def verify(self, step: int) -> str | None:
    """integrity.check of ``step`` (hashed once, on process 0, shared with the others)."""
    if step not in self._checks:
      mine = integrity.check(os.path.join(self.directory, str(step))) if (
          jax.process_index() == 0) else None
      self._checks[step] = from_process0(mine)
    return self._checks[step]

  def newest_usable(self) -> int | None:
    """The newest step not proven damaged; a damaged one is moved aside (with a log line) and
    the next older tried. None without steps; an error if every step was damaged."""
    for step in sorted(self.all_steps(), reverse=True):
      problem = self.verify(step)
      if problem in (None, integrity.UNVERIFIED):
        if problem:
          logging.warning("checkpoint: step %d has no %s (saved by an older version); using"
                          " it unverified", step, integrity.MANIFEST)
        return step
      self.set_aside.append(self._set_aside(step, problem))
    if self.set_aside:
      raise RuntimeError(
          f"no intact checkpoint in {self.directory}: {'; '.join(self.set_aside)}. Each was"
          " moved aside to unreadable-<step>-<time>; a rerun starts from scratch (move them"
          " back by hand to inspect them).")
    return None

  def saved_config(self, step: int) -> dict[str, Any]:
    args = ocp.args.Composite(config=ocp.args.JsonRestore())
    return self.manager.restore(step, args=args)["config"]

  def tokenizer_files(self, step: int) -> dict[str, bytes] | None:
    """The tokenizer files saved with ``step`` (None for a checkpoint without them)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "tokenizer")):
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(tokenizer=ocp.args.StandardRestore()))
    return tokenizer_lib.from_item({k: bytes(np.asarray(v, np.uint8))
                                    for k, v in out["tokenizer"].items()})

  def check_compatible(self, step: int, config, abstract_state: Any = None) -> None:
    """Raises ValueError naming what differs: MUST_MATCH config keys, then state leaves."""
    saved = self.saved_config(step)
    where = f"checkpoint {self.directory} step {step}"
    diff = config_diff(saved, config_to_json(config))
    if diff:
      raise ResumeError(
          f"{where} was written by a different model config; differing keys (checkpoint ->"
          f" current): {'; '.join(diff)}. Use a fresh --workdir or the checkpoint's config.")
    if abstract_state is None:
      return
    leaves = shape_diff(self.saved_shapes(step), named_shapes(abstract_state))
    if leaves:
      keys = config_diff(saved, config_to_json(config), STRUCTURE_KEYS)
      raise ResumeError(
          f"{where} holds a differently shaped train state: {'; '.join(leaves[:12])}"
          f"{' ...' if len(leaves) > 12 else ''}. Config keys that differ (checkpoint ->"
          f" current): {'; '.join(keys) or 'none of ' + ', '.join(STRUCTURE_KEYS)}.")

  def check_run_config(self, step: int, config) -> list[str]:
    """Refuses (ResumeError) a resume that changes keys which change the run (compat.run_diff),
    unless ``train.allow_config_change``; then logs each change. Returns the changes."""
    diff = compat.run_diff(self.saved_config(step), config_to_json(config))
    if diff and not config.train.get("allow_config_change", False):
      raise ResumeError(
          f"checkpoint {self.directory} step {step} was trained with another config; keys that"
          f" change the run (checkpoint -> current): {'; '.join(diff)}. Resume with the"
          " checkpoint's values, or pass --config.train.allow_config_change=True to go on with"
          " the new ones (logged and recorded in run_card.json), or use a fresh --workdir.")
    if diff != self.config_changes:
      for change in diff:
        logging.warning("checkpoint: resuming step %d with a changed config (allowed by"
                        " train.allow_config_change): %s", step, change)
    self.config_changes = diff
    return diff

  def preflight(self, config) -> int | None:
    """The step a resume will use, its config checked (model keys, run keys) before the run
    writes anything; damaged steps are moved aside on the way. None: a fresh start."""
    step = self.newest_usable()
    if step is not None:
      self.check_compatible(step, config)
      self.check_run_config(step, config)
    return step

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
    """(step, state, data state) of the newest step not proven damaged, or None if none.

    Only proof of damage (integrity.check) moves a step aside; any other failure, an
    incompatible config included, is a ResumeError with every step left in place.
    """
    step = self.newest_usable()
    if step is None:
      return None
    self.check_compatible(step, config, abstract_state)
    self.check_run_config(step, config)
    try:
      out = (step,) + self.restore(step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      verified = self.verify(step) is None
      how = "passes its integrity check" if verified else "has no integrity manifest"
      hint = "" if verified else (  # unverified: it may be damaged after all; the user decides
          f"; if it is damaged, rename {self.directory}/{step} to unreadable-{step} to fall"
          " back to the previous step")
      raise ResumeError(
          f"checkpoint {self.directory} step {step} {how} but this run cannot restore it"
          f" ({type(e).__name__}: {str(e)[:500]}). Nothing was moved. Rerun with the layout and"
          f" config it was saved with (its config: {self.directory}/{step}/config), or use a"
          f" fresh --workdir{hint}.") from e
    if self.set_aside:
      logging.warning("checkpoint: fell back to step %d, the newest step that verifies (moved"
                      " aside: %s)", step, "; ".join(self.set_aside))
    return out

  def _set_aside(self, step: int, error: str) -> str:
    """Renames a step dir proven damaged (so later saves of that step can proceed)."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"unreadable-{step}-{int(time.time())}")
    msg = f"step {step} ({error})"
    logging.warning("checkpoint: %s is damaged: %s; moving it to %s and trying an older"
                    " step", src, msg, dst)
    if jax.process_index() == 0 and os.path.isdir(src):
      os.rename(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self.manager.reload()
    return msg

  def sync_tokenizer(self, workdir: str) -> None:
    """Writes the newest checkpoint's tokenizer files into ``workdir`` if it has none; refuses
    a different one there."""
    for step in sorted(self.all_steps(), reverse=True):
      if self.verify(step) not in (None, integrity.UNVERIFIED):
        continue  # damaged: restore_latest moves it aside
      try:
        files = self.tokenizer_files(step)
      except Exception:  # pylint: disable=broad-except  (restore_latest reports it)
        continue
      if files is None:
        return
      had = bool(tokenizer_lib.workdir_files(workdir))
      tokenizer_lib.write_workdir(files, workdir, f"the tokenizer saved in checkpoint step {step}"
                                  f" of {self.directory} (delete the workdir's to use it)")
      if not had:
        logging.info("checkpoint: tokenizer restored from step %d to %s", step, workdir)
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
