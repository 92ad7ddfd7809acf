"""Precomputed VAE latents: the raw-record field and the vision-stream patches made from it.

An image part of a record written by `encode_latents` carries

    "latent": {"shape": [h, w, C], "dtype": "float16" | "bfloat16" | "float32", "bytes": <raw>}

the VAE's normalised posterior mean ((mean - shift) * scaling, model/vae.py `encode`) of the
image resized to its resolution bucket, channels last, C-order bytes (raw in records.dumps'
msgpack; a base64 string in JSON). The image's pixels or path
stay in the part (the understanding ViT reads pixels). With `config.data.latents = "precomputed"`
the packer puts `patchify(latent, config.data.latent_patch)` in the CVAE / NVAE slots instead of
pixel patches: model.latent_dim = latent_channels * latent_patch ** 2.

`config.data.latents = "encode"`: no stored latents; the packer leaves the CVAE / NVAE slots
zero and gives each row `vis_pixels` [K, S, S, 3] uint8 (its images with vision copies, in
image-id order; K = `vision_images`), which the train input step encodes with the frozen VAE
of `config.data.vae` (model/codec.py). Images are then one size, data.image_size square.
"""

from __future__ import annotations

import base64
import binascii
import glob
import json
import os
import re
from typing import Any

import numpy as np

from mogao_jax import part_configs
from mogao_jax.data import batch as batch_lib

DTYPES = ("float16", "bfloat16", "float32")
MODES = ("pixels", "precomputed", "encode")


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def to_field(latent: np.ndarray, dtype: str = "float16") -> dict[str, Any]:
  """float [h, w, C] -> the record field (stored as `dtype`)."""
  if dtype not in DTYPES:
    raise ValueError(f"latent dtype {dtype!r}: want one of {DTYPES}")
  a = np.ascontiguousarray(np.asarray(latent, np.float32).astype(_np_dtype(dtype)))
  if a.ndim != 3:
    raise ValueError(f"latent must be [h, w, C], got shape {a.shape}")
  return {"shape": [int(s) for s in a.shape], "dtype": dtype, "bytes": a.tobytes()}


def from_field(field: Any) -> np.ndarray:
  """The record field -> float32 [h, w, C]; ValueError (with the reason) when malformed."""
  if not isinstance(field, dict):
    raise ValueError(f"latent field must be a dict, got {type(field).__name__}")
  shape, dtype, data = field.get("shape"), field.get("dtype"), field.get("bytes")
  if (not isinstance(shape, (list, tuple)) or len(shape) != 3
      or not all(isinstance(s, int) and s > 0 for s in shape)):
    raise ValueError(f"latent shape must be 3 positive ints [h, w, C], got {shape!r}")
  if dtype not in DTYPES:
    raise ValueError(f"latent dtype {dtype!r}: want one of {DTYPES}")
  if isinstance(data, str):  # JSON has no bytes: base64 text, as image bytes
    try:
      data = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
      raise ValueError("latent bytes: a string that is not base64") from e
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise ValueError(f"latent bytes must be bytes, got {type(data).__name__}")
  dt = _np_dtype(dtype)
  want = int(np.prod(shape)) * dt.itemsize
  if len(data) != want:
    raise ValueError(f"latent of shape {list(shape)} {dtype} needs {want} bytes, got {len(data)}")
  a = np.frombuffer(bytes(data), dt).reshape(shape).astype(np.float32)
  if not np.isfinite(a).all():
    raise ValueError("latent holds non-finite values")
  return a


def grid_shape(latent: np.ndarray, p: int) -> tuple[int, int]:
  """(rows, cols) of the latent's patch grid; ValueError when a side is not divisible by p."""
  h, w, _ = latent.shape
  if p <= 0 or h % p or w % p:
    raise ValueError(f"latent of {h}x{w} is not divisible by config.data.latent_patch={p}")
  return h // p, w // p


def patchify(latent: np.ndarray, p: int) -> np.ndarray:
  """float [h, w, C] -> float32 [(h/p)(w/p), p*p*C], row-major patches flattened (ph, pw, c):
  the layout of model/vae.patchify_latents (and of images.patchify for pixels)."""
  gh, gw = grid_shape(latent, p)
  c = latent.shape[-1]
  x = np.asarray(latent, np.float32).reshape(gh, p, gw, p, c).transpose(0, 2, 1, 3, 4)
  return x.reshape(gh * gw, p * p * c)


def vision_slots(data_config) -> tuple[int, int]:
  """(latent_patch, vis_latent width) of config.data: (0, patch_size**2 * 3) with "pixels"."""
  d = data_config
  if d.get("latents", "pixels") != "pixels":
    return d.latent_patch, d.latent_channels * d.latent_patch ** 2
  return 0, d.patch_size * d.patch_size * 3


def vae_keys(data_config) -> dict | None:
  """latent_channels and factor of the VAE in `data.vae` (part_configs.vae_keys, from its
  config.json); None when unset. ValueError naming the key and the file when unreadable."""
  path = data_config.get("vae", "") or ""
  if not path:
    return None
  try:
    return part_configs.vae_keys(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"config.data.vae={path!r}: {e} (want a diffusers AutoencoderKL "
                     "directory: config.json + diffusion_pytorch_model.safetensors)") from e


def encode_grid(data_config) -> tuple[int, int]:
  """("encode") the latent patch grid of a data.image_size image: (S / (f p), S / (f p))."""
  d = data_config
  g = d.image_size // (vae_keys(d)["factor"] * d.latent_patch)
  return g, g


def vision_images(l_vis: int, grid: tuple[int, int]) -> int:
  """("encode") images with vision copies one row holds, K of `vis_pixels`: every such image
  takes at least grid[0] * grid[1] vision slots."""
  return max(1, l_vis // (grid[0] * grid[1]))


def _check_vision_grid(config, grid: int, factor: int) -> None:
  """The model's vision grid (batch.config_vision_grid: the images per row it computes the
  timestep modulation for) must be the latent grid of a data.image_size image."""
  if "model" not in config:
    return
  have = batch_lib.config_vision_grid(config)
  if have != grid:
    d = config.data
    raise ValueError(
        f"config.model.vis_grid={config.model.get('vis_grid', 0)} (vision grid {have}) but a "
        f"config.data.image_size={d.image_size} image has a latent grid of {d.image_size} / "
        f"(VAE downsampling {factor} x config.data.latent_patch={d.latent_patch}) = {grid}: set "
        f"config.model.vis_grid={grid} (the row's image capacities are counted in it)")


def check_config(config) -> None:
  """config.data.latents / latent_patch / latent_channels / vae against config.model.latent_dim
  and the VAE's own config.json ("pixels" is pipeline._check's business)."""
  d = config.data
  mode = d.get("latents", "pixels")
  if mode not in MODES:
    raise ValueError(f"config.data.latents={mode!r}: want one of {MODES}")
  if mode == "pixels":
    return
  if mode == "encode" and vae_keys(d) is None:  # first: the rest follows from the VAE
    raise ValueError("config.data.latents='encode' needs config.data.vae (a diffusers "
                     "AutoencoderKL directory)")
  p, c = d.get("latent_patch", 0), d.get("latent_channels", 0)
  if p <= 0 or c <= 0:
    raise ValueError(f"config.data.latents={mode!r} needs config.data.latent_patch and "
                     f"config.data.latent_channels > 0, got {p} and {c}")
  if "model" in config and config.model.get("latent_dim", c * p * p) != c * p * p:
    raise ValueError(f"config.model.latent_dim={config.model.latent_dim} but "
                     f"config.data.latent_channels={c} x config.data.latent_patch={p}**2 = "
                     f"{c * p * p} ({mode} latents)")
  vae = vae_keys(d)
  if vae is None:
    if mode == "encode":
      raise ValueError("config.data.latents='encode' needs config.data.vae (a diffusers "
                       "AutoencoderKL directory)")
    return
  have = vae["latent_channels"]
  if have != c:
    raise ValueError(f"config.data.latent_channels={c} but the VAE of config.data.vae has "
                     f"{have} latent channels ({os.path.join(d.vae, 'config.json')})")
  f = vae["factor"]
  if mode == "encode" and d.image_size % (f * p):
    raise ValueError(f"config.data.image_size={d.image_size} is not divisible by the VAE's "
                     f"downsampling {f} x config.data.latent_patch={p}")
  _check_vision_grid(config, d.image_size // (f * p), f)
  if mode == "encode":
    buckets = [tuple(b) for b in (d.get("image_buckets", None) or ())]
    if buckets and buckets != [(d.image_size, d.image_size)]:
      raise ValueError(f"config.data.latents='encode' encodes one image size, "
                       f"config.data.image_size={d.image_size} square; config.data."
                       f"image_buckets={buckets} has others (encode them offline: "
                       "python -m mogao_jax.encode_latents, then data.latents='precomputed')")


# encode_latents' progress marker beside its part files (one per shard).
_MARKER = re.compile(r"latents-\d+-of-\d+\.progress\.json")


def check_shards(config, files, buckets) -> None:
  """("precomputed") before any compile: the encode_latents progress markers beside `files`
  (a source's ArrayRecord files) must record the run's image buckets (config.data.image_size /
  image_buckets: `buckets`) and latent channels (config.data.latent_channels); ValueError naming
  the marker file and the key. Files without a marker (not written by encode_latents) pass."""
  d = config.data
  want = sorted(tuple(int(v) for v in b) for b in buckets)
  for folder in sorted({os.path.dirname(os.path.abspath(f)) for f in files}):
    for marker in sorted(glob.glob(os.path.join(folder, "latents-*.progress.json"))):
      if not _MARKER.fullmatch(os.path.basename(marker)):
        continue
      try:
        with open(marker) as fh:
          progress = json.load(fh)
      except (OSError, ValueError) as e:
        raise ValueError(f"{marker}: unreadable encode_latents progress marker ({e})") from e
      got = sorted(tuple(int(v) for v in b) for b in progress["settings"].get("buckets", ()))
      if got != want:
        raise ValueError(
            f"{marker}: latents encoded for images of {got} (settings.buckets) but this run's "
            f"config.data.image_size={d.image_size} / config.data.image_buckets give {want}: "
            "set those keys to the encoded sizes, or re-encode (python -m "
            "mogao_jax.encode_latents --image_size / --image_buckets)")
      channels = progress.get("latent_channels")
      if channels is not None and channels != d.latent_channels:
        raise ValueError(
            f"{marker}: latents of {channels} channels (latent_channels) but "
            f"config.data.latent_channels={d.latent_channels}: the VAE that encoded them is "
            "not the run's (config.data.vae)")
