"""Slots <-> an image batch: the per-image layout that the understanding encoder reads
(model/vit.py) and that the on-the-fly VAE codec writes (model/codec.py).

A stream's slots of some kinds (VIT in the text stream; CVAE and NVAE in the vision stream)
are patches of the row's images. `image_keys` gives each such slot its place in a
[B, n_images * grid**2] layout: image rank * grid**2 + H * grid + W. An image's rank is the
number of distinct images of those kinds in the row with a smaller image id (ids are
row-unique and every image has one patch at (H, W) = (0, 0), which represents it), so the
layout depends on the slots' metadata only, not on where they sit in the stream, and the
CVAE and NVAE copies of one image share their place. Slots past the capacity get none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mogao_jax.data.batch import Kind


def image_rank(kind_BL, image_BL, pos_BL3, kinds):
  """(rank, is_img) [B, L]: each slot's image rank among the row's images of `kinds` (ranks
  of other slots are meaningless: mask them with is_img)."""
  is_img = jnp.isin(kind_BL, jnp.asarray(kinds, kind_BL.dtype))
  h, w = pos_BL3[..., 1], pos_BL3[..., 2]
  rep = is_img & (h == 0) & (w == 0)
  big = jnp.iinfo(jnp.int32).max
  ids = jnp.sort(jnp.where(rep, image_BL, big), axis=1)
  new = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  unique_rank = jnp.cumsum(new, axis=1) - 1  # at each id's first occurrence in the sort
  first = jax.vmap(jnp.searchsorted)(ids, image_BL)
  rank = jnp.take_along_axis(unique_rank, jnp.minimum(first, ids.shape[1] - 1), axis=1)
  return rank, is_img


def image_keys(kind_BL, image_BL, pos_BL3, kinds, n_images: int, grid):
  """int32 [B, L]: each slot's place (n_images * gh * gw = none). `grid`: an int (square)
  or (gh, gw), the most patch rows and columns an image has."""
  gh, gw = (grid, grid) if isinstance(grid, int) else grid
  rank, is_img = image_rank(kind_BL, image_BL, pos_BL3, kinds)
  h, w = pos_BL3[..., 1], pos_BL3[..., 2]
  n = gh * gw
  ok = is_img & (rank < n_images) & (h < gh) & (w < gw)
  return jnp.where(ok, rank * n + h * gw + w, n_images * n).astype(jnp.int32)


def copy_index(kind_BL, image_BL, pos_BL3, n_images: int):
  """int32 [B, L] of a vision stream: each slot's image copy, 0..n-1 the CVAE copies and
  n..2n-1 the NVAE copies of the row's first n images with vision copies (by image id),
  2n every other slot (padding, images past n: the packer keeps rows within n)."""
  rank, is_img = image_rank(kind_BL, image_BL, pos_BL3, (Kind.CVAE, Kind.NVAE))
  copy = jnp.where(kind_BL == Kind.NVAE, n_images + rank, rank)
  return jnp.where(is_img & (rank < n_images), copy, 2 * n_images).astype(jnp.int32)


def per_copy(x_BL, copy_BL, n_copies: int):
  """[B, L] slot values -> [B, n_copies] (each copy's value; every slot of a copy holds the
  same one, e.g. its diffusion time)."""
  rows = jnp.arange(x_BL.shape[0])[:, None]
  return jnp.zeros((x_BL.shape[0], n_copies), x_BL.dtype).at[rows, copy_BL].max(x_BL)


def to_images(key_BL, arrays, n_images: int, n_patches: int):
  """[B, L, ...] slot arrays -> [B * n_images, n_patches, ...] image arrays, plus valid
  [B * n_images, n_patches] (False where an image has no patch there or is absent)."""
  b, l = key_BL.shape
  rows = jnp.arange(b)[:, None]
  slot_of = jnp.full((b, n_images * n_patches + 1), l, jnp.int32)
  slot_of = slot_of.at[rows, key_BL].set(jnp.arange(l, dtype=jnp.int32)[None])[:, :-1]
  valid = (slot_of < l).reshape(b * n_images, n_patches)

  def gather(x):
    x = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)  # slot l: zeros
    g = jnp.take_along_axis(x, slot_of.reshape(b, -1, *([1] * (x.ndim - 2))), axis=1)
    return g.reshape(b * n_images, n_patches, *x.shape[2:])

  return [gather(x) for x in arrays], valid


def to_slots(feat_IND, key_BL):
  """[B * n_images, n_patches, D] -> [B, L, D]: each slot its patch's row, 0 where none."""
  b = key_BL.shape[0]
  flat = feat_IND.reshape(b, -1, feat_IND.shape[-1])
  flat = jnp.concatenate([flat, jnp.zeros_like(flat[:, :1])], axis=1)
  return jnp.take_along_axis(flat, key_BL[..., None], axis=1)
