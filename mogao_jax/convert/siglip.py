"""SigLIP (Hugging Face SiglipVisionModel / SiglipModel directory) -> model/siglip.py.

    cfg = load_config(path); params, report = import_tower(params, path)
    params, report = import_into_model(config, params, path)   # into Mogao's `vit` (vit=siglip)

The pooling head (`head.*`) is not used: Mogao reads the patch features. Names: mapping.SIGLIP_*.
"""

from __future__ import annotations

import os

from mogao_jax import part_configs
from mogao_jax.convert import mapping, tensors
from mogao_jax.model.siglip import SiglipConfig


def load_config(path: str) -> SiglipConfig:
  return SiglipConfig.from_hf(tensors.read_json(os.path.join(path, "config.json")))


def import_tower(params: dict, path: str, prefix: str = "") -> tuple[dict, list[str]]:
  """SigLIP weights into a SiglipTower / SiglipImages param tree (under `prefix`, e.g. "vit/")."""
  cfg = load_config(path)
  flat = tensors.flatten(params)
  theirs = tensors.read_dir(path)
  pre = "vision_model." if "vision_model.post_layernorm.weight" in theirs else ""
  report = mapping.import_entries(flat, theirs, mapping.siglip_entries(cfg.depth, prefix, pre),
                                  path)
  return tensors.unflatten(flat), report


def model_keys(path: str) -> dict:
  """Our `model.*` keys implied by the SigLIP config (part_configs.siglip_keys; the patch
  size is data.patch_size)."""
  return part_configs.siglip_keys(path)


def import_into_model(config, params: dict, path: str) -> tuple[dict, list[str]]:
  """Into Mogao's understanding encoder; the `model.vit*` keys must match the checkpoint."""
  want = model_keys(path)
  have = {k: config.model.get(k) for k in want}
  have["vit_pos_grid"] = have["vit_pos_grid"] or config.model.vit_grid  # 0 = vit_grid
  bad = [f"model.{k}={have[k]!r} (checkpoint: {v!r})" for k, v in want.items() if have[k] != v]
  if bad:
    raise ValueError(f"the model config disagrees with {path}/config.json: {'; '.join(bad)}")
  return import_tower(params, path, prefix="vit/")
