"""The understanding encoders' per-image form, the tiny ViT of the tiny configs, and the MLP
connector to the model width.

Both encoders (TinyViT here, SiglipTower's encoder in model/siglip.py) run over each image's
own patches: the VIT slots of the text stream are gathered into an image batch
[B * images, patches, ...] (model/image_batch.py), encoded with attention inside each image
only, and scattered back to their slots. Why not attend over the text stream with a mask: that
costs an [L_txt, L_txt] score array per head and layer for a few hundred patches per
image (at 7B, 2048 text slots and 729 patches per image, about 30 GiB per chip of the SigLIP
tower's activations). The image capacity of a row is `model.vit_images` (batch.vit_capacity),
which the packer enforces; an image's patches sit at their (H, W) in a `model.vit_grid`**2
grid (images.check_buckets keeps every bucket within it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mogao_jax.model import layers
from mogao_jax.model.config import ModelConfig


def patch_mask(valid_IN):
  """[I, N, N]: a patch reads the real patches of its own image."""
  return valid_IN[:, :, None] & valid_IN[:, None, :]


def grid_index(pos_IN3, grid: int):
  """Row-major index of each patch's (H, W) in a grid x grid position table."""
  return (jnp.clip(pos_IN3[..., 1], 0, grid - 1) * grid
          + jnp.clip(pos_IN3[..., 2], 0, grid - 1))


class TinyViT(nn.Module):
  """A small ViT trained from scratch, on images [I, N, patch_dim] with learned position
  embeddings indexed by each patch's (H, W)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, patch_INP, pos_IN3, valid_IN):
    c = self.cfg
    dt = c.compute_dtype
    x = layers.dense(c.vit_width, (None, "embed"), c, bias=True, bias_axes=("embed",),
                     name="patch_embed")(patch_INP)
    x = x + nn.Embed(c.vit_grid * c.vit_grid, c.vit_width, name="pos_embed",
                     embedding_init=nn.with_logical_partitioning(
                         layers.EMBED_INIT, (None, "embed")))(grid_index(pos_IN3, c.vit_grid))
    mask_INN = patch_mask(valid_IN)
    head_dim = c.vit_width // c.vit_heads
    for i in range(c.vit_depth):
      h = nn.LayerNorm(dtype=dt, name=f"ln_attn_{i}")(x)
      qkv = layers.dense((3, c.vit_heads, head_dim), ("embed", None, "heads", "kv"), c,
                         bias=True, bias_axes=(None, "heads", "kv"), name=f"qkv_{i}")(h)
      o = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask_INN)
      x = x + layers.dense(c.vit_width, ("heads", "kv", "embed"), c, n_in=2, bias=True,
                           bias_axes=("embed",), name=f"out_{i}")(o)
      h = nn.LayerNorm(dtype=dt, name=f"ln_mlp_{i}")(x)
      h = layers.dense(4 * c.vit_width, ("embed", "mlp"), c, bias=True, bias_axes=("mlp",),
                       name=f"fc1_{i}")(h)
      x = x + layers.dense(c.vit_width, ("mlp", "embed"), c, bias=True, bias_axes=("embed",),
                           name=f"fc2_{i}")(jax.nn.gelu(h))
    return nn.LayerNorm(dtype=dt, name="post_ln")(x)


class Connector(nn.Module):
  """The 2-layer MLP from encoder width to model width (LLaVA-style)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, feat_BLE):
    c = self.cfg
    h = layers.dense(c.width, (None, "embed"), c, bias=True, bias_axes=("embed",),
                     name="fc1")(feat_BLE)
    return layers.dense(c.width, (None, "embed"), c, bias=True, bias_axes=("embed",),
                        name="fc2")(jax.nn.gelu(h))
