"""A training workdir -> (config, tokenizer, params, step) for sampling, on one device."""

from __future__ import annotations

import json
import os

from absl import logging
import jax
import ml_collections

from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """DIR/config.json, else the config item of the newest checkpoint."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  ckpt = ckpt_lib.Checkpointer(workdir, ml_collections.ConfigDict({"train": {}}))
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir {workdir} has neither config.json nor a checkpoint")
  return ml_collections.ConfigDict(ckpt.saved_config(step))


def load_tokenizer(workdir: str, ckpt=None, step=None) -> tokenizer_lib.Tokenizer:
  path = os.path.join(workdir, tokenizer_lib.MODEL_FILE)
  if os.path.exists(path):
    with open(path, "rb") as f:
      return tokenizer_lib.Tokenizer(f.read())
  proto = ckpt.tokenizer_proto(step) if ckpt is not None and step is not None else None
  if proto is None:
    raise FileNotFoundError(f"--workdir {workdir} has no {tokenizer_lib.MODEL_FILE} and its "
                            "checkpoint holds no tokenizer")
  return tokenizer_lib.Tokenizer(proto)


def restore_params(workdir: str, config, use_ema: bool = True):
  """(params, step) of the newest checkpoint, on the first local device. EMA params when the
  state has them and `use_ema` (the usual choice for sampling)."""
  ckpt = ckpt_lib.Checkpointer(workdir, config)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"--workdir {workdir} has no checkpoint under checkpoints/")
    model = step_lib.make_model(config)
    tx, _ = optim_lib.make_optimizer(config)
    abstract = jax.eval_shape(
        lambda k: step_lib.init_state(config, model, tx, k, step_lib.example_batch(config, 1)),
        jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = ckpt_lib.abstract_with_shardings(abstract, jax.tree.map(lambda _: device,
                                                                       abstract))
    state, _ = ckpt.restore(step, abstract, config)
    tok = load_tokenizer(workdir, ckpt, step)
  finally:
    ckpt.close()
  ema = getattr(state, "ema", None)
  params = ema if use_ema and ema is not None else state.params
  logging.info("sampling from %s step %d (%s params)", workdir, step,
               "EMA" if params is ema else "raw")
  return params, step, tok
