"""Export the whole model for PyTorch: `model.safetensors` + `config.json` + `torch_model.py`,
and with `write_generation` what sampling needs without mogao_jax: `torch_generate.py`,
`generation.json` (special ids, image geometry, the codec) and the VAE in diffusers format.

The tensor names are our flat parameter paths in the unscanned layout with "/" -> "."
("stack.layers_0.txt.q_proj.kernel"); the arrays keep our layouts (kernels [in, *out]), which
torch_model.py reads directly, so there is no second name table to keep in sync.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from mogao_jax.convert import tensors
from mogao_jax.convert import vae as vae_convert
from mogao_jax.data import tokenizer as tokenizer_lib

_TORCH_MODEL = os.path.join(os.path.dirname(__file__), "torch_model.py")
_TORCH_GENERATE = os.path.join(os.path.dirname(__file__), "torch_generate.py")


def state_dict(params: dict) -> dict[str, np.ndarray]:
  """Our params (any layout) as the flat float32 tensors torch_model.Mogao loads."""
  flat = tensors.flatten(params)
  if tensors.is_scanned(flat):
    depth = next(v.shape[0] for k, v in flat.items() if k.startswith("stack/layers/"))
    flat = tensors.unscan(flat, depth)
  return {k.replace("/", "."): np.asarray(v, np.float32) for k, v in flat.items()}


def export(params: dict, cfg, out_dir: str) -> list[str]:
  """Writes the export directory; `cfg` is the ModelConfig. Returns one line per tensor."""
  os.makedirs(out_dir, exist_ok=True)
  sd = state_dict(params)
  tensors.write_file(os.path.join(out_dir, "model.safetensors"), sd, {"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  shutil.copy(_TORCH_MODEL, os.path.join(out_dir, "torch_model.py"))
  return [f"{k} {list(v.shape)}" for k, v in sorted(sd.items())]


def generation_config(config, tok) -> dict:
  """What torch_generate.py reads besides the weights: the run's special ids (and the ids the
  sampler must never emit), image
  geometry (data.image_size / patch_size), and its codec (pixel patches, or the VAE's latents
  patchified data.latent_patch x latent_patch)."""
  d = config.data
  codec = "pixels" if d.get("latents", "pixels") == "pixels" else "vae"
  if codec == "pixels":
    side, latent_patch = d.image_size // d.patch_size, d.patch_size
  else:
    factor = vae_convert.load_config(d.vae).factor
    side, latent_patch = d.image_size // (factor * d.latent_patch), d.latent_patch
  ids = {f"{k}_id": int(getattr(tok, f"{k}_id")) for k in
         ("pad", "bos", "eos", "img_open", "img_close")}
  # The ids the JAX sampler never draws (tokenizer.emittable): the torch sampler masks the same.
  blocked = np.flatnonzero(~tokenizer_lib.emittable(tok, config.model.vocab_size))
  return dict(ids, blocked_ids=blocked.tolist(), codec=codec, image_size=d.image_size, patch_size=d.patch_size,
              latent_patch=latent_patch, latent_grid=[side, side],
              latent_dim=config.model.latent_dim)


def write_generation(config, tok, out_dir: str) -> list[str]:
  """torch_generate.py, generation.json and (a VAE run) vae/ = data.vae's diffusers files."""
  shutil.copy(_TORCH_GENERATE, os.path.join(out_dir, "torch_generate.py"))
  g = generation_config(config, tok)
  with open(os.path.join(out_dir, "generation.json"), "w") as f:
    json.dump(g, f, indent=1)
  lines = ["generation.json", "torch_generate.py"]
  if g["codec"] == "vae":
    vae = os.path.join(out_dir, "vae")
    os.makedirs(vae, exist_ok=True)
    for name in sorted(os.listdir(config.data.vae)):
      if name == "config.json" or name.endswith(".safetensors"):
        shutil.copy(os.path.join(config.data.vae, name), vae)
        lines.append(f"vae/{name}")
  return lines
