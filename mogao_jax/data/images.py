"""Image validation, resolution buckets and patchify: uint8 pixels <-> float32 patch sequences.

Patches are row-major over the image's (gh, gw) patch grid; each patch is flattened in
(ph, pw, c) order, so patch k covers grid row k // gw, column k % gw. The same layout serves the
VIT stream and the pixel-space stand-in for VAE latents (patch_dim = latent_dim = p * p * 3).
Images need not be square: any H x W with both sides divisible by the patch size works, and
IL-RoPE / the VIT position table take (row, col) per patch.

Resolution buckets (`config.data.image_buckets`, a list of (h, w) pairs, each divisible by the
patch size; default: just (image_size, image_size)) keep an external image's aspect ratio:
`fit_to_bucket` picks the bucket whose aspect ratio is nearest (in log space), resizes with the
aspect ratio kept so the image covers the bucket, and centre-crops the (minimal) excess.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

def grid_shape(pixels: np.ndarray, patch_size: int) -> tuple[int, int]:
  """(rows, cols) of the patch grid of a uint8 [H, W, 3] image; raises ValueError when bad."""
  if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
    got = getattr(pixels, "dtype", type(pixels))
    raise ValueError(f"image must be a uint8 numpy array, got {got}")
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"image must have shape [H, W, 3], got {pixels.shape}")
  h, w, _ = pixels.shape
  if patch_size <= 0 or h % patch_size or w % patch_size or h == 0 or w == 0:
    raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch_size} "
                     "(config.data.image_size / image_buckets / patch_size)")
  return h // patch_size, w // patch_size


def validate(pixels: np.ndarray, patch_size: int) -> int:
  """The grid side (S // p) of a SQUARE image; raises ValueError on a bad or non-square image.
  (The sampler works in squares; the data path uses `grid_shape`.)"""
  gh, gw = grid_shape(pixels, patch_size)
  if gh != gw:
    raise ValueError(f"image must be square, got {pixels.shape[0]}x{pixels.shape[1]}")
  return gh


def _hw(grid) -> tuple[int, int]:
  if isinstance(grid, (tuple, list)):
    gh, gw = grid
    return int(gh), int(gw)
  return int(grid), int(grid)


def patchify(pixels: np.ndarray, p: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [(H/p) * (W/p), p*p*3] in [-1, 1]."""
  gh, gw = grid_shape(pixels, p)
  x = pixels.astype(np.float32) / 127.5 - 1.0
  x = x.reshape(gh, p, gw, p, 3).transpose(0, 2, 1, 3, 4)  # [gh, gw, ph, pw, c]
  return x.reshape(gh * gw, p * p * 3)


def unpatchify(patches: np.ndarray, grid) -> np.ndarray:
  """float [gh*gw, p*p*3] in [-1, 1] -> uint8 [gh*p, gw*p, 3]; values outside [-1, 1] are
  clipped. `grid`: the side of a square grid, or (gh, gw)."""
  gh, gw = _hw(grid)
  patches = np.asarray(patches, np.float32)
  if patches.ndim != 2 or patches.shape[0] != gh * gw:
    raise ValueError(f"patches must have shape [{gh}*{gw}, p*p*3], got {patches.shape}")
  p2 = patches.shape[1] // 3
  p = int(round(p2 ** 0.5))
  if p * p * 3 != patches.shape[1]:
    raise ValueError(f"patch dim {patches.shape[1]} is not p*p*3 for an integer p")
  x = patches.reshape(gh, gw, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(gh * p, gw * p, 3)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def patch_rows_cols(grid) -> tuple[np.ndarray, np.ndarray]:
  """(H, W) grid coordinates of the row-major patches, each int32 [gh * gw], read-only (one
  pair per grid, shared: the data path asks for it per image); `grid` is the side of a square
  grid or (gh, gw)."""
  return _rows_cols(*_hw(grid))


@functools.lru_cache(maxsize=64)
def _rows_cols(gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
  k = np.arange(gh * gw, dtype=np.int32)
  rows, cols = k // gw, k % gw
  rows.flags.writeable = cols.flags.writeable = False
  return rows, cols


# ----------------------------------------------------------------------------- resolution buckets

def check_buckets(buckets: Sequence[Sequence[int]], patch_size: int,
                  key: str = "config.data.image_buckets") -> tuple[tuple[int, int], ...]:
  """Validated buckets as a tuple of (h, w); raises ValueError naming `key`."""
  try:
    out = tuple((int(h), int(w)) for h, w in buckets)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{key} must be a list of (h, w) pairs, got {buckets!r}") from e
  if not out:
    raise ValueError(f"{key} is empty")
  for h, w in out:
    if h <= 0 or w <= 0 or h % patch_size or w % patch_size:
      raise ValueError(f"{key} has ({h}, {w}); each side must be a positive multiple of the "
                       f"patch size {patch_size}")
  return out


def buckets_from_config(data_config) -> tuple[tuple[int, int], ...]:
  """`config.data.image_buckets` if set, else the single square (image_size, image_size)."""
  d = data_config
  raw = d.get("image_buckets") if hasattr(d, "get") else None
  if not raw:
    return ((int(d.image_size), int(d.image_size)),)
  return check_buckets(raw, int(d.patch_size))


def nearest_bucket(h: int, w: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """The bucket whose aspect ratio is nearest to h:w in log space; ties go to the bucket whose
  area is nearest the image's, then to the first listed."""
  la = math.log(h / w)
  def key(b):
    return (round(abs(math.log(b[0] / b[1]) - la), 9), abs(math.log(b[0] * b[1] / (h * w))))
  return min(buckets, key=key)


def fit_to_bucket(pixels: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [bh, bw, 3]: aspect-preserving resize that covers the bucket
  (Pillow bicubic; box-filtered first when shrinking a lot), then a centre crop of the excess.
  An image already of the bucket's size is returned unchanged (the world's images)."""
  bh, bw = bucket
  h, w = pixels.shape[:2]
  if (h, w) == (bh, bw):
    return pixels
  scale = max(bh / h, bw / w)
  nh, nw = max(bh, round(h * scale)), max(bw, round(w * scale))
  im = PILImage.fromarray(pixels)
  if (nh, nw) != (h, w):
    im = im.resize((nw, nh), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
  top, left = (nh - bh) // 2, (nw - bw) // 2
  return np.ascontiguousarray(np.asarray(im.crop((left, top, left + bw, top + bh)), np.uint8))


def to_bucket(pixels: np.ndarray, buckets: Sequence[tuple[int, int]]) -> np.ndarray:
  """`fit_to_bucket` at `nearest_bucket`."""
  h, w = pixels.shape[:2]
  return fit_to_bucket(pixels, nearest_bucket(h, w, buckets))
