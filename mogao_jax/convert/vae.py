"""diffusers AutoencoderKL directory (config.json + safetensors) -> model/vae.py.

    cfg, params, report = load(path)
    latents = AutoencoderKL(cfg).apply({"params": params}, images, method="encode")
    codec = codec_for(run_config)   # the run's image codec (pixels, or this VAE)
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mogao_jax.convert import mapping, tensors
from mogao_jax.data import latents
from mogao_jax.model import codec as codec_lib
from mogao_jax.model.vae import AutoencoderKL, VAEConfig


def load_config(path: str) -> VAEConfig:
  f = os.path.join(path, "config.json")
  return VAEConfig.from_hf(tensors.read_json(f), f)


def load(path: str) -> tuple[VAEConfig, dict, list[str]]:
  """(config, params, report) of a diffusers AutoencoderKL directory; no random init."""
  cfg = load_config(path)
  model = AutoencoderKL(cfg)
  f = cfg.factor
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 2 * f, 2 * f, cfg.in_channels)))["params"]
  flat = tensors.flatten(abstract)
  entries = mapping.vae_entries({k: v.shape for k, v in flat.items()})
  report = mapping.import_entries(flat, tensors.read_dir(path), entries, path)
  return cfg, tensors.unflatten(flat), report


def codec_for(config):
  """The image codec of a run config (model/codec.py): pixel patches with
  data.latents = "pixels", else the VAE of data.vae (loaded here; its errors name the file)."""
  d = config.data
  mode = d.get("latents", "pixels")
  if mode == "pixels":
    return codec_lib.PixelCodec(d.image_size, d.patch_size)
  path = d.get("vae", "") or ""
  if not path:
    raise ValueError(f"config.data.latents={mode!r}: turning latents into images needs the "
                     "VAE, config.data.vae (a diffusers AutoencoderKL directory)")
  latents.check_config(config)  # channels and sizes against the VAE's config.json
  cfg, params, _ = load(path)
  return codec_lib.VAECodec(cfg, params, d.image_size, d.latent_patch)
