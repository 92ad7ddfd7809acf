"""The training loop: init or restore, step, log, checkpoint.

``train(config, workdir)`` is the whole job. Config keys read here: ``seed``, ``train.steps``,
``train.log_every``, ``train.ckpt_every`` (and via the helpers ``mesh.*``, ``dist.*``,
``optim.*``, ``train.keep_checkpoints``). Outputs under ``workdir``: ``config.json``,
``metrics.jsonl`` (one JSON object per logged step), ``tb/`` (TensorBoard), ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import tensorboardX  # pure-python writer: flax.metrics.tensorboard / clu need TensorFlow

from mogao_jax.data import pipeline
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib


def validate(config) -> None:
  """Loop keys and batch divisibility; errors name the key."""
  t = config.train
  for key in ("steps", "log_every", "ckpt_every"):
    v = t[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"train.{key} = {v!r}: must be a positive int")
  bs, n = config.data.batch_size, jax.process_count()
  if bs % n:
    raise ValueError(f"data.batch_size = {bs} is not divisible by the {n} processes")


def _check_batch_split(config, mesh, rules) -> None:
  ways = rules_lib.batch_size_divisor(mesh, rules)
  if config.data.batch_size % ways:
    raise ValueError(
        f"data.batch_size = {config.data.batch_size} does not split over the {ways} devices"
        f" of the 'batch' rule in mesh.rules (mesh {dict(mesh.shape)})")


def _zero_batch(config) -> dict[str, np.ndarray]:
  """A per-process all-padding batch with the contract's shapes, for init and shape tracing."""
  return step_lib.example_batch(config, config.data.batch_size // jax.process_count())


def _to_global(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def write_config(config, workdir: str) -> None:
  logging.info("config:\n%s", config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(ckpt_lib.config_to_json(config), f, indent=2, sort_keys=True)


class MetricsLog:
  """Window means of the step metrics -> absl log line, metrics.jsonl and TensorBoard."""

  def __init__(self, config, workdir: str, schedule):
    self.schedule = schedule
    self.slots = config.data.batch_size * (config.data.l_txt + config.data.l_vis)
    self.primary = jax.process_index() == 0
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.primary else None
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb")) if self.primary else None
    self.pending: list[dict[str, jax.Array]] = []  # device metrics of the current window
    self.window_start = None  # wall time after the first (compiling) step of the window
    self.timed_steps = 0
    self.compile_s = None

  def add(self, metrics: dict[str, jax.Array], compiled_now: float | None) -> None:
    self.pending.append(metrics)
    if compiled_now is not None:  # first step: its time is compile time, not throughput
      self.compile_s = compiled_now
      self.window_start = time.perf_counter()
    else:
      self.timed_steps += 1

  def pause(self, seconds: float) -> None:
    """Leaves ``seconds`` of non-step work (e.g. a checkpoint save) out of the throughput."""
    if self.window_start is not None:
      self.window_start += seconds

  def flush(self, step: int) -> dict[str, Any]:
    """Fetches the window (blocks on the device), writes it; ``step`` = steps completed."""
    host = jax.device_get(self.pending)
    now = time.perf_counter()
    rec = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    real = float(sum(m.get("n_real_tokens", 0.0) for m in host[-self.timed_steps:])
                 ) if self.timed_steps else 0.0
    elapsed = now - self.window_start if self.timed_steps else 0.0
    rec.update(step=step, lr=float(self.schedule(step - 1)),
               real_frac=rec.get("n_real_tokens", 0.0) / self.slots)
    if self.timed_steps:
      rec.update(step_time_s=elapsed / self.timed_steps, tokens_per_s=real / elapsed)
    if self.compile_s is not None:
      rec["compile_s"] = self.compile_s
    self._write(rec)
    self.pending, self.timed_steps, self.compile_s = [], 0, None
    self.window_start = time.perf_counter()
    return rec

  def _write(self, rec: dict[str, Any]) -> None:
    g = lambda k: rec.get(k, float("nan"))  # noqa: E731
    logging.info(
        "step %d  loss %.4f  text %.4f  flow %.4f  lr %.2e  |g| %.3f  %.3fs/step  %.0f tok/s"
        "  real %.2f%s", rec["step"], g("loss"), g("text_loss"), g("flow_loss"), g("lr"),
        g("grad_norm"), g("step_time_s"), g("tokens_per_s"), g("real_frac"),
        f"  (first step incl. compile {rec['compile_s']:.1f}s)" if "compile_s" in rec else "")
    if not self.primary:
      return
    self.jsonl.write(json.dumps(rec) + "\n")
    self.jsonl.flush()
    for k, v in rec.items():
      if k != "step":
        self.tb.add_scalar(f"train/{k}", v, rec["step"])
    self.tb.flush()

  def close(self) -> None:
    if self.primary:
      self.jsonl.close()
      self.tb.close()


def _progress(total: int, initial: int):
  if jax.process_index() != 0 or not sys.stderr.isatty():
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _init_or_restore(config, model, tx, ckpt, mesh, rules, example_batch, data_iter):
  """(state, state_shardings): a restored checkpoint if the workdir has one, else a fresh init."""
  specs = step_lib.state_logical_specs(config, model, tx, example_batch)
  shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
  init = jax.jit(lambda key, b: step_lib.init_state(config, model, tx, key, b),
                 out_shardings=shardings)
  key = jax.random.key(config.seed)
  latest = ckpt.latest_step()
  if latest is None:
    logging.info("initialising a fresh state (seed %d)", config.seed)
    return init(key, example_batch), shardings
  abstract = jax.eval_shape(init, key, example_batch)
  state, data_state = ckpt.restore(
      latest, ckpt_lib.abstract_with_shardings(abstract, shardings), config)
  data_iter.set_state(pipeline.state_from_json(data_state))
  return state, shardings


def train(config, workdir: str) -> list[dict[str, Any]]:
  """Trains to ``train.steps`` (resuming from ``workdir``); returns the logged records."""
  mesh_lib.maybe_initialize_distributed(config)
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  mesh = mesh_lib.make_mesh(config)
  rules = rules_lib.make_rules(config, mesh)
  _check_batch_split(config, mesh, rules)
  tx, schedule = optim_lib.make_optimizer(config)

  tokenizer = pipeline.make_tokenizer(config, workdir)
  data_iter = pipeline.make_pipeline(config, tokenizer, split="train",
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  model = step_lib.make_model(config)
  bsh = rules_lib.batch_sharding(mesh, rules)
  ckpt = ckpt_lib.Checkpointer(workdir, config)
  log = MetricsLog(config, workdir, schedule)
  try:
    with rules_lib.activate(mesh, rules):
      example = _to_global(_zero_batch(config), bsh)
      state, shardings = _init_or_restore(config, model, tx, ckpt, mesh, rules, example,
                                          data_iter)
      replicated = NamedSharding(mesh, PartitionSpec())  # the scalar metrics
      step_fn = jax.jit(step_lib.make_train_step(config, model, tx),
                        in_shardings=(shardings, bsh), out_shardings=(shardings, replicated),
                        donate_argnums=0)
      return _run(config, state, step_fn, data_iter, bsh, ckpt, log)
  finally:
    # Whatever happened, let pending async saves land so the last checkpoint is not lost.
    ckpt.close()
    log.close()


def _run(config, state, step_fn, data_iter, bsh, ckpt, log) -> list[dict[str, Any]]:
  t = config.train
  start = int(jax.device_get(state.step))
  logging.info("training steps %d -> %d", start, t.steps)
  bar, records = _progress(t.steps, start), []
  first = True
  for step in range(start, t.steps):
    batch = _to_global(next(data_iter), bsh)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    if first:  # block once so the compile lands in compile_s, not in the throughput window
      jax.block_until_ready(metrics)
    log.add(metrics, time.perf_counter() - t0 if first else None)
    first, done = False, step + 1
    if done % t.log_every == 0 or done == t.steps:
      records.append(log.flush(done))
    if done % t.ckpt_every == 0 or done == t.steps:
      t0 = time.perf_counter()
      ckpt.save(done, state, pipeline.state_to_json(data_iter.get_state()), config)
      log.pause(time.perf_counter() - t0)  # the save's blocking part is not step time
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return records
