"""Image validation and patchify: uint8 pixels <-> float32 patch sequences in [-1, 1].

Patches are row-major over the image grid; each patch is flattened in (ph, pw, c) order, so
patch k covers grid row k // grid, column k % grid. The same layout serves the VIT stream and
the pixel-space stand-in for VAE latents (patch_dim = latent_dim = p * p * 3).
"""

from __future__ import annotations

import numpy as np


def validate(pixels: np.ndarray, patch_size: int) -> int:
  """Returns the grid side (S // p); raises ValueError on a bad image or patch size."""
  if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
    got = getattr(pixels, "dtype", type(pixels))
    raise ValueError(f"image must be a uint8 numpy array, got {got}")
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"image must have shape [S, S, 3], got {pixels.shape}")
  h, w, _ = pixels.shape
  if h != w:
    raise ValueError(f"image must be square, got {h}x{w}")
  if patch_size <= 0 or h % patch_size:
    raise ValueError(f"image size {h} is not divisible by patch size {patch_size} "
                     "(config.data.image_size / config.data.patch_size)")
  return h // patch_size


def patchify(pixels: np.ndarray, p: int) -> np.ndarray:
  """uint8 [S, S, 3] -> float32 [(S/p)^2, p*p*3] in [-1, 1]."""
  g = validate(pixels, p)
  x = pixels.astype(np.float32) / 127.5 - 1.0
  x = x.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4)  # [gh, gw, ph, pw, c]
  return x.reshape(g * g, p * p * 3)


def unpatchify(patches: np.ndarray, grid: int) -> np.ndarray:
  """float [grid^2, p*p*3] in [-1, 1] -> uint8 [S, S, 3]; values outside [-1, 1] are clipped."""
  patches = np.asarray(patches, np.float32)
  if patches.ndim != 2 or patches.shape[0] != grid * grid:
    raise ValueError(f"patches must have shape [{grid}^2, p*p*3], got {patches.shape}")
  p2 = patches.shape[1] // 3
  p = int(round(p2 ** 0.5))
  if p * p * 3 != patches.shape[1]:
    raise ValueError(f"patch dim {patches.shape[1]} is not p*p*3 for an integer p")
  x = patches.reshape(grid, grid, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(grid * p, grid * p, 3)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def patch_rows_cols(grid: int) -> tuple[np.ndarray, np.ndarray]:
  """(H, W) grid coordinates of the row-major patches, each int32 [grid^2]."""
  k = np.arange(grid * grid, dtype=np.int32)
  return k // grid, k % grid
