"""The edit skip (``model.edit_skip``, off by default: the paper's model has none).

Edits did not copy (issue 34): a noisy target patch had no direct path to the source image's
patch at the same (H, W) cell, only attention through IL-RoPE. InstructPix2Pix concatenates the
source latent to the noisy input; here each NVAE slot's input gets a zero-initialised,
bias-free projection of the CLEAN latent of its source image at the same (H, W) cell
(model/mogao.py), so training starts from exactly the model without it.

Which image is the source of a noisy image: the most recent preceding clean (CVAE) copy in
the same document (segment) with the same grid (patch rows and columns). "Preceding" is a
strictly smaller T (every image takes its own T step, so an image's own CVAE copy, a story
image that is both target and context, is not its source); "most recent" the largest such T.
A t2i image has none: its source latent is zero and the skip adds exactly zero. Condition
dropout of the context images (data/transforms.py) removes the source from the document, so
such an image trains without the skip, as the sampler's unconditioned guidance branch runs.

Derived from the slots' metadata alone (segment, kind, image, pos): no batch field. The
training forward derives it over the row's vision stream; the sampler derives it with the
same function over a row's clean images so far plus the noisy one (sample/engine.py); the
PyTorch export, pairwise over the vision slots (convert/torch_model.py `edit_source`).
"""

from __future__ import annotations

import jax.numpy as jnp

from mogao_jax.data.batch import Kind
from mogao_jax.model import image_batch


def _image_table(kind_BL, image_BL, pos_BL3, segment_BL, n_images: int):
  """Per image (rank among the row's images with vision copies): segment, T, rows, cols and
  whether it has a CVAE copy, each [B, n_images]; plus each slot's (rank, in_table)."""
  rank, is_img = image_batch.image_rank(kind_BL, image_BL, pos_BL3, (Kind.CVAE, Kind.NVAE))
  ok = is_img & (rank < n_images)
  where = jnp.where(ok, rank, n_images)  # images past the capacity: a dropped column
  rows = jnp.arange(kind_BL.shape[0])[:, None]

  def per_image(x_BL):
    x_BL = jnp.where(ok, x_BL.astype(jnp.int32), 0)
    return jnp.zeros((kind_BL.shape[0], n_images + 1), jnp.int32).at[rows, where].max(
        x_BL)[:, :n_images]

  table = dict(segment=per_image(segment_BL), t=per_image(pos_BL3[..., 0]),
               rows=per_image(pos_BL3[..., 1] + 1), cols=per_image(pos_BL3[..., 2] + 1),
               clean=per_image(kind_BL == Kind.CVAE) > 0)
  return table, rank, ok


def source_index(table):
  """[B, n] each image's source image (rank) and [B, n] whether it has one (module doc)."""
  tgt = {k: v[:, :, None] for k, v in table.items()}  # target image j, candidate i
  cand = {k: v[:, None, :] for k, v in table.items()}
  ok = (cand["clean"] & (cand["segment"] == tgt["segment"]) & (tgt["segment"] > 0)
        & (cand["t"] < tgt["t"]) & (cand["rows"] == tgt["rows"])
        & (cand["cols"] == tgt["cols"]))
  score = jnp.where(ok, cand["t"], -1)  # T is unique per image within a document
  return jnp.argmax(score, axis=-1).astype(jnp.int32), jnp.max(score, axis=-1) >= 0


def source_latents(kind_BL, image_BL, pos_BL3, segment_BL, latent_BLC, n_images: int,
                   grid: int):
  """[B, L, C]: on each NVAE slot the clean latent of its source image at the slot's (H, W)
  cell, zero on every other slot and on NVAE slots without a source. `latent_BLC` is read on
  CVAE slots only (clean there; NVAE slots may hold x_t). `n_images`: the row's image
  capacity (batch.vis_capacity); `grid`: the largest patch rows / columns of an image."""
  b, l, c = latent_BLC.shape
  if l == 0 or n_images == 0:  # no vision slot (the sampler's text decoding): nothing to add
    return jnp.zeros_like(latent_BLC)
  table, rank, ok = _image_table(kind_BL, image_BL, pos_BL3, segment_BL, n_images)
  src_Bn, has_Bn = source_index(table)
  h, w = pos_BL3[..., 1], pos_BL3[..., 2]
  in_grid = (h < grid) & (w < grid)
  g2 = grid * grid
  # The clean latents as [B, n * grid^2 (+ 1 dropped), C] by (image rank, H, W).
  put = jnp.where(ok & in_grid & (kind_BL == Kind.CVAE), rank * g2 + h * grid + w, n_images * g2)
  rows = jnp.arange(b)[:, None]
  clean = jnp.zeros((b, n_images * g2 + 1, c), latent_BLC.dtype).at[rows, put].set(latent_BLC)
  safe_rank = jnp.minimum(rank, n_images - 1)
  src_BL = jnp.take_along_axis(src_Bn, safe_rank, axis=1)
  has_BL = jnp.take_along_axis(has_Bn, safe_rank, axis=1)
  read = ok & in_grid & (kind_BL == Kind.NVAE) & has_BL
  take = jnp.where(read, src_BL * g2 + h * grid + w, n_images * g2)
  out = jnp.take_along_axis(clean, take[..., None], axis=1)
  return jnp.where(read[..., None], out, 0.0)
