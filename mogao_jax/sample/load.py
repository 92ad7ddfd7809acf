"""A training workdir -> (config, params, step, tokenizer) for sampling, on one device.

Everything is read through train/restore.py (params only, read-only; no optimizer built).
"""

from __future__ import annotations

from absl import logging

from mogao_jax.train import restore


def load(workdir: str, use_ema: bool = True, step: int | None = None):
  """(config, params, step, tokenizer) of the newest checkpoint (or ``step``), params on the
  first local device: the EMA where the state has one and ``use_ema`` (the usual choice)."""
  config = restore.load_config(workdir)
  params, step, which = restore.restore_params(workdir, step=step,
                                               which="auto" if use_ema else "params")
  logging.info("sampling from %s step %d (%s params)", workdir, step,
               "EMA" if which == "ema" else "raw")
  return config, params, step, restore.load_tokenizer(workdir, step)
