"""Pretrained initialisation selected by config keys, applied to a freshly initialised state.

    config.init.text = "/path/to/qwen2"   # Qwen2 -> text pathway (vision pathway too when
                                          # model.vision_init == "copy_text")
    config.init.vit = "/path/to/siglip"   # SigLIP -> the ViT (needs model.vit == "siglip")

Empty strings (the default) keep the random init. The imported tensors are listed, one line
each, in `<workdir>/init_report.txt`.
"""

from __future__ import annotations

import os

from absl import logging
import jax

from mogao_jax.convert import qwen2
from mogao_jax.model.mogao import copy_text_to_vision
from mogao_jax.convert import siglip


def _key(config, name: str) -> str:
  init = config.get("init", None)
  return (init.get(name, "") if init is not None else "") or ""


def requested(config) -> bool:
  return bool(_key(config, "text") or _key(config, "vit"))


def apply(config, params: dict) -> tuple[dict, list[str]]:
  """Host-side: params (plain nested dict) with the configured pretrained parts loaded."""
  report = []
  text = _key(config, "text")
  if text:
    qwen2.check_config(config.model, text)
    params, lines = qwen2.import_text(params, text)
    report += [f"[init.text] {ln}" for ln in lines]
    if config.model.vision_init == "copy_text":
      params = copy_text_to_vision(params)
      report.append("[init.text] text pathway copied into the vision pathway "
                    "(model.vision_init=copy_text)")
  vit = _key(config, "vit")
  if vit:
    params, lines = siglip.import_into_model(config, params, vit)
    report += [f"[init.vit] {ln}" for ln in lines]
  return params, report


def apply_to_state(config, state, param_shardings, workdir: str | None = None):
  """The TrainState with pretrained parts loaded and placed on the params' shardings."""
  if not requested(config):
    return state
  params, report = apply(config, jax.device_get(state.params))
  params = jax.device_put(params, param_shardings)
  logging.info("pretrained init: %d tensors mapped", sum("UNUSED" not in r for r in report))
  if workdir and jax.process_index() == 0:
    with open(os.path.join(workdir, "init_report.txt"), "w") as f:
      f.write("\n".join(report) + "\n")
  return state.replace(params=params)
