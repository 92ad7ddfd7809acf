"""Anti-aliased rendering of world scenes at any resolution (32, 64, 128, 256 px, ...).

A pixel is the mean of SUPERSAMPLE x SUPERSAMPLE sub-pixel samples, each the colour of the
object whose shape covers the sample's centre (else the background). Every sample is an
integer colour, so the mean is sum / 16 exactly and the pixel is that rounded half to even.

Speed (the host builds a batch's ~55 images beside the train step, benchmarks/RESULTS.md
section 16): an object's coverage depends only on (row, col, shape, size, image size), so
`_counts` caches, per object, how many of each pixel's samples it covers in its box; a scene
whose objects cannot overlap (every scene `scene.valid` accepts) is then the background plus
each object's counts times (its colour - the background), in integers: the same pixels as
painting every sample (`_render_painted`, which overlapping scenes still take, the last object
on top) and averaging, bit for bit (tests/test_world.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mogao_jax.data.sources.world import scene as scene_lib

SUPERSAMPLE = 4  # render at 4x and box-filter down: cheap, exact-enough anti-aliasing


@functools.lru_cache(maxsize=8)
def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Supersampled pixel-centre coordinates, in output-pixel units."""
  n = image_size * SUPERSAMPLE
  c = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
  return c[:, None], c[None, :]


def cell_centre(row: int, col: int, image_size: int) -> tuple[float, float]:
  return scene_lib.CENTRES[row] * image_size, scene_lib.CENTRES[col] * image_size


def _half(obj: scene_lib.Object, image_size: int) -> float:
  return scene_lib.SIZES[obj.size] * image_size / 2


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray, half: float) -> np.ndarray:
  if shape == "circle":
    return dy * dy + dx * dx <= half * half
  if shape == "square":
    return (np.abs(dy) <= half) & (np.abs(dx) <= half)
  if shape == "triangle":  # apex up; the half-width shrinks linearly from base to apex
    return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
  raise ValueError(f"unknown shape {shape!r}; known: {scene_lib.SHAPES}")


def coverage(obj: scene_lib.Object, image_size: int) -> np.ndarray:
  """Boolean mask [S*k, S*k] of the supersampled pixel centres inside the object."""
  yy, xx = _grid(image_size)
  cy, cx = cell_centre(obj.row, obj.col, image_size)
  return _inside(obj.shape, yy - cy, xx - cx, _half(obj, image_size))


def _box(centre: float, half: float, image_size: int) -> tuple[int, int]:
  """Output pixels [lo, hi) holding every sample within `half` of `centre` (one pixel of
  margin each side against float32 rounding; clamped to the image)."""
  return max(0, math.floor(centre - half) - 1), min(image_size, math.ceil(centre + half) + 2)


@functools.lru_cache(maxsize=1024)
def _counts(row: int, col: int, shape: str, size: str,
            image_size: int) -> tuple[int, int, np.ndarray]:
  """(y0, x0, counts int32 [h, w]): how many of each output pixel's samples the object covers,
  on its box at (y0, x0). The same float32 arithmetic as `coverage`, on the box's samples
  only (elementwise, so bit-identical to slicing the full mask). Read-only."""
  obj = scene_lib.Object(row, col, shape, "red", size)
  cy, cx = cell_centre(row, col, image_size)
  half = _half(obj, image_size)
  (y0, y1), (x0, x1) = _box(cy, half, image_size), _box(cx, half, image_size)
  k = SUPERSAMPLE
  yy, xx = _grid(image_size)
  mask = _inside(shape, yy[y0 * k:y1 * k] - cy, xx[:, x0 * k:x1 * k] - cx, half)
  counts = mask.reshape(y1 - y0, k, x1 - x0, k).sum(axis=(1, 3), dtype=np.int32)
  counts.flags.writeable = False
  return y0, x0, counts


def _disjoint(objects) -> bool:
  """Whether no two objects' shapes can share a sample: their boxes are apart along an axis
  (by more than float32 rounding of the sample tests could blur; `scene.valid` keeps GAP)."""
  def apart(a, b):
    need = (scene_lib.SIZES[a.size] + scene_lib.SIZES[b.size]) / 2 + 1e-4
    return (abs(scene_lib.CENTRES[a.col] - scene_lib.CENTRES[b.col]) > need
            or abs(scene_lib.CENTRES[a.row] - scene_lib.CENTRES[b.row]) > need)
  return all(apart(a, b) for i, a in enumerate(objects) for b in objects[i + 1:])


# Per-pixel sample sum (0 .. 255 * 16: colours are bytes) -> the mean rounded half to even, as
# np.round does the painted canvas's mean: a table, not float work per pixel.
_MEAN_U8 = np.clip(np.round(np.arange(255 * SUPERSAMPLE ** 2 + 1, dtype=np.float32)
                            / SUPERSAMPLE ** 2), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _step(colour: str) -> np.ndarray:
  """int32 [3]: the colour minus the background (what one covered sample adds)."""
  out = (np.asarray(scene_lib.COLOURS[colour], np.int32)
         - np.asarray(scene_lib.BACKGROUND, np.int32))
  out.flags.writeable = False
  return out


def _render_painted(scene: scene_lib.Scene, image_size: int) -> np.ndarray:
  """Every sample painted in object order, then box-filtered: the reference, and the path of
  scenes whose objects overlap (the last object on top)."""
  n = image_size * SUPERSAMPLE
  canvas = np.empty((n, n, 3), np.float32)
  canvas[:] = scene_lib.BACKGROUND
  for obj in scene.objects:
    canvas[coverage(obj, image_size)] = scene_lib.COLOURS[obj.colour]
  canvas = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(1, 3))
  return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def render(scene: scene_lib.Scene, image_size: int) -> np.ndarray:
  """uint8 [S, S, 3] on the plain background, anti-aliased."""
  if image_size < 12:
    raise ValueError(f"image_size must be >= 12 (config.data.image_size), got {image_size}")
  if not _disjoint(scene.objects):
    return _render_painted(scene, image_size)
  sums = np.empty((image_size, image_size, 3), np.int32)
  sums[:] = np.asarray(scene_lib.BACKGROUND, np.int32) * SUPERSAMPLE ** 2
  for obj in scene.objects:
    y0, x0, counts = _counts(obj.row, obj.col, obj.shape, obj.size, image_size)
    h, w = counts.shape
    sums[y0:y0 + h, x0:x0 + w] += counts[..., None] * _step(obj.colour)
  return _MEAN_U8.take(sums)
