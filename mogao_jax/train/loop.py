"""The training loop: init or restore, step, log, checkpoint; stop on preemption or NaNs.

``train(config, workdir)`` is the whole job. Config keys read here: ``seed``, ``train.steps``,
``train.log_every``, ``train.ckpt_every``, ``train.debug_nan_steps`` (test hook: steps whose
batch is poisoned with NaN) (and via the helpers ``mesh.*``, ``dist.*``, ``optim.*``,
``train.keep_checkpoints``, ``train.keep_every``, ``train.ema_decay``, ``train.max_nan_skips``,
``init.*``). Outputs under ``workdir``: ``config.json``, ``metrics.jsonl`` (one JSON object per
logged step), ``tb/`` (TensorBoard), ``checkpoints/``.

Stops early on SIGTERM / a preemption sync point, with a checkpoint of the last step (returns
normally, so the process exits 0). Raises ``NonFiniteError`` after ``train.max_nan_skips``
consecutive non-finite steps, when every step of the run was skipped, or when the run ends or
is stopped inside a streak of skips; steps inside a streak are never saved (nan_guard.py).

Start-up, before anything is written: the workdir lock (train/workdir_lock.py; a second trainer
on the workdir stops naming the holder), then the resume checks (Checkpointer.preflight: damaged
steps set aside, another model or run config refused), then config.json and the run card.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from mogao_jax import config_schema
from mogao_jax.convert import init as convert_init
from mogao_jax.convert import vae as vae_convert
from mogao_jax.data import encoding
from mogao_jax.data import latents
from mogao_jax.data import pipeline
from mogao_jax.data import shards as shards_lib
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import report
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import dry_run
from mogao_jax.train import hooks as hooks_lib
from mogao_jax.train import metrics as metrics_lib
from mogao_jax.train import nan_guard
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import preempt as preempt_lib
from mogao_jax.train import runcard
from mogao_jax.train import step as step_lib
from mogao_jax.train import transfer
from mogao_jax.train import workdir_lock
from mogao_jax.model.mogao import Mogao
from mogao_jax.data import batch as batch_lib


def validate(config) -> None:
  """Batch divisibility by processes and microbatches, the data sources and the image codec
  against their files (a VAE's config.json); before any data read or compile. A bad value is a
  ConfigError naming the key (and the file): the entry point prints it as one line."""
  try:
    latents.check_config(config)
    pipeline.check_config(config)
    bs, n = config.data.batch_size, jax.process_count()
    if bs % n:
      raise ValueError(f"data.batch_size = {bs} is not divisible by the {n} processes")
    k = step_lib.grad_accum_steps(config)
    if bs % k:
      raise ValueError(f"data.batch_size = {bs} is not divisible by train.grad_accum_steps = "
                       f"{k}")
  except ValueError as e:
    raise config_schema.ConfigError(f"bad config value: {e}") from None


def _check_batch_split(config, mesh, rules) -> None:
  ways = rules_lib.batch_size_divisor(mesh, rules)
  if config.data.batch_size % ways:
    raise ValueError(
        f"data.batch_size = {config.data.batch_size} does not split over the {ways} devices"
        f" of the 'batch' rule in mesh.rules (mesh {dict(mesh.shape)})")
  k = step_lib.grad_accum_steps(config)
  if config.data.batch_size % (ways * k):  # every microbatch must split over the devices too
    raise ValueError(
        f"data.batch_size = {config.data.batch_size} does not split into"
        f" train.grad_accum_steps = {k} microbatches of whole rows on each of the {ways} devices"
        f" of the 'batch' rule (needs a multiple of {ways * k})")


def _zero_batch(config) -> dict[str, np.ndarray]:
  """A per-process all-padding batch with the contract's shapes, for init and shape tracing."""
  return batch_lib.example_batch(config, config.data.batch_size // jax.process_count())


def _to_global(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def write_config(config, workdir: str) -> None:
  logging.info("config:\n%s", config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(ckpt_lib.config_to_json(config), f, indent=2, sort_keys=True)


def _fresh_state(config, init, key, example_batch, shardings, workdir):
  """A fresh init, then pretrained parts (init.text / init.vit) or another run's params
  (init.params_from); the EMA, if on, starts from the final params."""
  logging.info("initialising a fresh state (seed %d)", config.seed)
  state = init(key, example_batch)
  state = convert_init.apply_to_state(config, state, shardings.params, workdir)
  state = transfer.apply_to_state(config, state, workdir)
  if state.ema is not None:  # a copy: the train step donates params and EMA separately
    state = state.replace(ema=jax.tree.map(lambda p: p.copy(), state.params))
  return state


def _init_or_restore(config, model, tx, ckpt, mesh, rules, example_batch, data_iter):
  """(state, state_shardings): the newest readable checkpoint of the workdir, else a fresh init."""
  specs = step_lib.state_logical_specs(config, model, tx, example_batch)
  shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
  init_fn = lambda key, b: step_lib.init_state(config, model, tx, key, b)  # noqa: E731
  key = jax.random.key(config.seed)
  shapes = jax.eval_shape(init_fn, key, example_batch)
  _report_sharding(config, shapes.params, specs.params, shardings.params, mesh)
  init = jax.jit(init_fn, out_shardings=shardings)
  abstract = ckpt_lib.abstract_with_shardings(shapes, shardings)
  restored = ckpt.restore_latest(abstract, config)
  if restored is None:
    workdir = os.path.dirname(ckpt.directory)
    return _fresh_state(config, init, key, example_batch, shardings, workdir), shardings
  _, state, data_states = restored
  data_iter.set_state([pipeline.state_from_json(s) for s in data_states])
  return state, shardings


def _report_sharding(config, abstract_params, logical_specs, shardings, mesh) -> None:
  """Logs every parameter's placement; stops if too much of it is replicated."""
  rows = report.parameter_rows(abstract_params, logical_specs, shardings)
  logging.info("sharding report:\n%s", report.format_table(rows))
  report.check_divisible(rows, mesh)
  report.check_replication(rows, mesh.size, config.mesh.get("max_replicated_fraction", 1.0))


def train(config, workdir: str, hooks=()) -> list[dict[str, Any]]:
  """Trains to ``train.steps`` (resuming from ``workdir``); returns the logged records.
  ``hooks`` (train/hooks.py) run between steps, e.g. eval/hooks.py's sample grids.

  With ``dry_run`` it only compiles the step for the mesh and reports memory, FLOPs and
  sharding (mogao_jax/train/dry_run.py); nothing is written.
  """
  config_schema.validate(config)  # every key's type and range, before any other work
  mesh_lib.maybe_initialize_distributed(config)
  if config.get("dry_run", False):
    return [dry_run.run(config)]
  validate(config)
  mesh = mesh_lib.make_mesh(config)
  rules = rules_lib.make_rules(config, mesh)
  _check_batch_split(config, mesh, rules)
  dry_run.check_memory(config, list(mesh.devices.flat))  # before anything is written
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir, jax.process_index() == 0, ckpt_lib.from_process0):
    return _train_locked(config, workdir, hooks, mesh, rules)


def _train_locked(config, workdir: str, hooks, mesh, rules) -> list[dict[str, Any]]:
  ckpt = ckpt_lib.Checkpointer(workdir, config)
  try:  # a resume this config cannot take stops here, before config.json or the card change
    ckpt.preflight(config)
  except BaseException:
    _close_quietly(ckpt.close)
    raise
  write_config(config, workdir)
  tx, schedule = optim_lib.make_optimizer(config)

  # A resumed run uses the tokenizer it was trained with (saved in the checkpoint).
  ckpt.sync_tokenizer(workdir)
  tokenizer = pipeline.make_tokenizer(config, workdir)
  bsh = rules_lib.batch_sharding(mesh, rules)
  # This process builds the data shards of the global rows its devices hold (in their order).
  shards = shards_lib.shards_of_rows(
      config.data, shards_lib.local_rows(bsh, config.data.batch_size))
  data_iter = pipeline.make_pipeline(config, tokenizer, split="train", shards=shards)
  model = Mogao.from_config(config)
  log = metrics_lib.MetricsLog(config, workdir, schedule)
  preempt = preempt_lib.Preemption(ckpt.manager)
  runcard.write_run_card(config, workdir, mesh=mesh, config_changes=ckpt.config_changes)
  failed = True
  try:
    with rules_lib.activate(mesh, rules):
      example = _to_global(_zero_batch(config), bsh)
      state, shardings = _init_or_restore(config, model, tx, ckpt, mesh, rules, example,
                                          data_iter)
      log.drop_after(int(jax.device_get(state.step)))
      replicated = NamedSharding(mesh, PartitionSpec())  # the scalar metrics
      shardings, opt_on_device = step_lib.offload_opt_state(config, shardings)
      state = jax.device_put(state, shardings) if opt_on_device is not None else state
      step_fn = jax.jit(step_lib.make_train_step(config, model, tx, opt_on_device),
                        in_shardings=(shardings, bsh), out_shardings=(shardings, replicated),
                        donate_argnums=0)
      saver = _Saver(ckpt, config, data_iter, tokenizer.files)
      ctx = hooks_lib.Context(config, workdir, log.tb, tokenizer.files)
      inputs = _input_step(config, mesh, bsh)
      records = _run(config, state, step_fn, data_iter, inputs, saver, log, preempt, hooks,
                     ctx)
      failed = False
      return records
  finally:
    # Whatever happened, let pending async saves land so the last checkpoint is not lost. With
    # an error already on its way out, a second one here (the same full disk, say) is logged as
    # one line instead of replacing it: the user sees one error, once.
    for close in (preempt.close, ckpt.close, log.close,
                  lambda: runcard.finish_run_card(workdir)):
      if failed:
        _close_quietly(close)
      else:
        close()


def _close_quietly(close) -> None:
  try:
    close()
  except Exception as e:  # pylint: disable=broad-except
    logging.error("while stopping after an error: %s: %s", type(e).__name__, str(e)[:300])


class _Saver:
  """Checkpoint saves of the loop (state + data iterator position + config + tokenizer)."""

  def __init__(self, ckpt, config, data_iter, tokenizer_files: dict[str, bytes]):
    self.ckpt, self.config, self.data_iter = ckpt, config, data_iter
    self.tokenizer_files, self.last = tokenizer_files, None

  def __call__(self, step: int, state) -> None:
    if self.last != step:
      self.ckpt.save(step, state, pipeline.state_to_json(self.data_iter.get_state()),
                     self.config, tokenizer_files=self.tokenizer_files)
      self.last = step


def _input_step(config, mesh, bsh):
  """local batch -> the global batch the step reads. With data.latents = "encode" a jitted
  input step encodes each row's images (`vis_pixels`) with the frozen VAE into the vision
  slots (model/codec.py); the VAE's weights are replicated and not part of the train state."""
  poison = set(config.train.get("debug_nan_steps", ()) or ())
  fill = None
  if config.data.get("latents", "pixels") == "encode":
    codec = vae_convert.codec_for(config)
    vae_params = jax.device_put(codec.params, NamedSharding(mesh, PartitionSpec()))
    jitted = jax.jit(codec.fill_latents, out_shardings=bsh)
    fill = lambda b: jitted(vae_params, b)  # noqa: E731

  def inputs(step: int, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    batch = _to_global(_poisoned(local) if step + 1 in poison else local, bsh)
    return fill(batch) if fill else batch
  return inputs


def _poisoned(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The NaN-injection test hook (train.debug_nan_steps): all vision latents NaN (pixel and
  precomputed latents; "encode" writes its latents after this)."""
  return {**batch, "vis_latent": np.full_like(batch["vis_latent"], np.nan)}


def _run(config, state, step_fn, data_iter, inputs, save, log, preempt, hooks,
         ctx) -> list[dict[str, Any]]:
  t = config.train
  start = done = int(jax.device_get(state.step))
  logging.info("training steps %d -> %d", start, t.steps)
  bar, records = metrics_lib.progress(t.steps, start), []
  guard = nan_guard.NanGuard(config)
  first, stop, preempted = True, None, False
  text_w = encoding.role_weights(config.data)  # for data/text_share/<role>

  def data_metrics():
    return pipeline.data_metrics(data_iter, ckpt_lib.gather_json, text_w)

  for step in range(start, t.steps):
    provenance = pipeline.state_to_json(data_iter.get_state())  # reproduces the next batch
    batch = inputs(step, next(data_iter))
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    if first:  # block once so the compile lands in compile_s, not in the throughput window
      jax.block_until_ready(metrics)
    first, done = False, step + 1
    stop = guard.push(done, metrics, provenance)  # checks the previous step (no stall)
    log.add(metrics, time.perf_counter() - t0 if done == start + 1 else None)
    if done % t.log_every == 0 or done == t.steps:
      records.append(log.flush(done, data_metrics()))
    if done % t.ckpt_every == 0 or done == t.steps:
      t0 = time.perf_counter()
      stop = stop or guard.drain()  # this step's skip flag: the save would block on it anyway
      if guard.in_streak:
        logging.warning("NaN guard: step %d is inside a streak of skipped steps (since step"
                        " %d); not saving it", done, guard.streak_start)
      else:
        save(done, state)
      log.pause(time.perf_counter() - t0)  # the save's blocking part is not step time
    for hook in hooks_lib.due(hooks, done):  # their time is not step time
      t0 = time.perf_counter()
      hook(done, state, ctx)
      log.pause(time.perf_counter() - t0)
    if bar is not None:
      bar.update(1)
    preempted = preempt.reached(done)
    if stop or preempted:
      break
  if bar is not None:
    bar.close()
  stop = stop or guard.drain() or guard.all_skipped(done - start)
  if (stop or preempted) and done > start and log.pending:
    records.append(log.flush(done, data_metrics()))
  if preempted and not guard.in_streak and done > start:
    save(done, state)
  save.ckpt.wait_until_finished()
  stop = stop or guard.streak_end(save.ckpt.latest_step())
  if stop:
    raise nan_guard.NonFiniteError(
        f"{stop}. Nothing past the last good checkpoint was saved: rerun resumes from step"
        f" {save.ckpt.latest_step()} in {save.ckpt.directory}.")
  if preempted:
    logging.warning("preemption: saved a checkpoint of step %d in %s; exiting cleanly. Rerun"
                    " the same command to resume.", done, save.ckpt.directory)
  return records
