"""The packed-batch contract: the one module both the data pipeline and the model import.

A row is two fixed-capacity streams that share one attention (ARCHITECTURE.md):

* the text stream (``L_txt`` slots) holds TXT and VIT tokens and runs through the text pathway;
* the vision stream (``L_vis`` slots) holds CVAE and NVAE tokens and runs through the vision
  pathway.

Every slot carries its own metadata (segment, kind, image, pos), and the model derives the
attention mask and IL-RoPE from it, so where a token sits in its stream does not matter.

Field names are ``<stream>_<name>``; shapes are ``[B, L_txt, ...]`` for ``txt_*`` and
``[B, L_vis, ...]`` for ``vis_*``. A batch is a plain ``dict[str, np.ndarray | jax.Array]``.
"""

from __future__ import annotations

import enum
from typing import Mapping

import numpy as np


class Kind(enum.IntEnum):
  """What a slot holds. PAD must be 0 so a zero-filled row is all padding."""

  PAD = 0
  TXT = 1  # a sentencepiece token, incl. <img> and </img>      (text stream)
  VIT = 2  # an understanding-encoder patch of a context image  (text stream)
  CVAE = 3  # a clean generation-encoder latent patch            (vision stream)
  NVAE = 4  # a noisy copy of a generation image's latent patch  (vision stream)


NUM_KINDS = len(Kind)
TEXT_STREAM_KINDS = (Kind.TXT, Kind.VIT)
VISION_STREAM_KINDS = (Kind.CVAE, Kind.NVAE)

# Metadata fields every slot of both streams carries.
META_FIELDS = ("segment", "kind", "image", "pos")


def txt_spec(l_txt: int, patch_dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Per-row shapes and dtypes of the text stream (no batch dimension)."""
  return {
      "txt_segment": ((l_txt,), np.dtype(np.int32)),  # packed document id; 0 = padding
      "txt_kind": ((l_txt,), np.dtype(np.int32)),  # Kind.TXT, Kind.VIT or Kind.PAD
      "txt_image": ((l_txt,), np.dtype(np.int32)),  # image id within the row; 0 for text
      "txt_pos": ((l_txt, 3), np.dtype(np.int32)),  # IL-RoPE (T, H, W)
      "txt_token": ((l_txt,), np.dtype(np.int32)),  # token id of TXT slots, 0 elsewhere
      "txt_target": ((l_txt,), np.dtype(np.int32)),  # next TXT token of the document
      "txt_loss_w": ((l_txt,), np.dtype(np.float32)),  # 1 where next-token CE applies
      "txt_patch": ((l_txt, patch_dim), np.dtype(np.float32)),  # VIT patch pixels in [-1, 1]
  }


def vis_spec(l_vis: int, latent_dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Per-row shapes and dtypes of the vision stream (no batch dimension)."""
  return {
      "vis_segment": ((l_vis,), np.dtype(np.int32)),
      "vis_kind": ((l_vis,), np.dtype(np.int32)),  # Kind.CVAE, Kind.NVAE or Kind.PAD
      "vis_image": ((l_vis,), np.dtype(np.int32)),
      "vis_pos": ((l_vis, 3), np.dtype(np.int32)),
      # The clean latent patch x1, for CVAE and NVAE slots alike: the train step draws t and
      # the noise and builds x_t itself, so the pipeline stays deterministic.
      "vis_latent": ((l_vis, latent_dim), np.dtype(np.float32)),
      "vis_loss_w": ((l_vis,), np.dtype(np.float32)),  # 1 on NVAE slots that train flow
  }


def _images_per_row(slots: int, vit_grid: int, cap: int) -> int:
  """A row's image capacity: `cap` if positive, else as many full-grid images (vit_grid**2
  slots each) as `slots` hold, at least one."""
  return cap if cap > 0 else max(1, slots // (vit_grid * vit_grid))


def vit_capacity(l_txt: int, vit_grid: int, vit_images: int = 0) -> int:
  """Images with VIT copies one row holds (the understanding encoder's image batch per row,
  model/vit.py; the packer keeps every row within it). `vit_images` 0 = as many full-grid
  images (vit_grid**2 patches each) as the text stream holds, which never binds for full-grid
  images; a positive value caps it (less encoder compute and memory per row)."""
  return _images_per_row(l_txt, vit_grid, vit_images)


def config_vit_capacity(config) -> int:
  """vit_capacity of a run config (data.l_txt, model.vit_grid / vit_images): what the
  packer keeps rows within and the model's encoder batch is sized for; 0 (no cap) for a
  config without a model section (the dataset doctor's)."""
  if "model" not in config:
    return 0
  m = config.model
  return vit_capacity(config.data.l_txt, m.vit_grid, m.get("vit_images", 0))


def vis_capacity(l_vis: int, vis_grid: int, vis_images: int = 0) -> int:
  """Images with vision (CVAE / NVAE) copies one row holds: the per-image timestep modulation
  is computed for that many images' copies (model/mogao.py; the packer keeps every row within
  it). `vis_images` 0 = as many images of vis_grid**2 slots (the LATENT grid of one image,
  model.vis_grid, not the understanding encoder's) as the vision stream holds."""
  return _images_per_row(l_vis, vis_grid, vis_images)


def config_vision_grid(config) -> int:
  """The vision stream's grid side of one image: model.vis_grid, 0 = model.vit_grid."""
  m = config.model
  return m.get("vis_grid", 0) or m.vit_grid


def config_vis_capacity(config) -> int:
  """vis_capacity of a run config (data.l_vis, model.vis_grid / vit_grid, vis_images); 0 (no
  cap) without a model section."""
  if "model" not in config:
    return 0
  return vis_capacity(config.data.l_vis, config_vision_grid(config),
                      config.model.get("vis_images", 0))


def row_spec(l_txt: int, l_vis: int, patch_dim: int, latent_dim: int):
  return {**txt_spec(l_txt, patch_dim), **vis_spec(l_vis, latent_dim)}


def empty_row(l_txt: int, l_vis: int, patch_dim: int, latent_dim: int) -> dict[str, np.ndarray]:
  """An all-padding row: every field zero (segment 0, Kind.PAD)."""
  return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
          row_spec(l_txt, l_vis, patch_dim, latent_dim).items()}


def check_batch(batch: Mapping[str, np.ndarray], l_txt: int, l_vis: int, patch_dim: int,
                latent_dim: int) -> None:
  """Raises ValueError naming the first field whose shape or dtype breaks the contract.

  Accepts a row (no batch dim) or a batch (leading batch dim of any size).
  """
  spec = row_spec(l_txt, l_vis, patch_dim, latent_dim)
  missing = sorted(set(spec) - set(batch))
  if missing:
    raise ValueError(f"packed batch is missing fields {missing}")
  for name, (shape, dtype) in spec.items():
    arr = batch[name]
    got = tuple(arr.shape)
    if got[-len(shape):] != shape or len(got) not in (len(shape), len(shape) + 1):
      raise ValueError(f"packed batch field {name!r} has shape {got}, expected [B, *{shape}]")
    if np.dtype(arr.dtype) != dtype:
      raise ValueError(f"packed batch field {name!r} has dtype {arr.dtype}, expected {dtype}")


def model_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The fields the model reads (targets and loss weights stay with the train step)."""
  return {k: v for k, v in batch.items() if k not in ("txt_target", "txt_loss_w", "vis_loss_w")}


def example_batch(config, batch_size: int | None = None) -> dict[str, np.ndarray]:
  """An all-padding batch with a run config's shapes (``data.l_txt`` / ``l_vis``,
  ``model.patch_dim`` / ``latent_dim``), for init and shape inference; ``batch_size`` rows
  (default ``data.batch_size``)."""
  d, m = config.data, config.model
  row = empty_row(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim)
  n = batch_size or d.batch_size
  return {k: np.zeros((n,) + v.shape, v.dtype) for k, v in row.items()}
