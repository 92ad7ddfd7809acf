"""The understanding encoder of the tiny configs: a small ViT trained from scratch, run over
the VIT slots of the text stream, plus the 2-layer MLP connector to the model width.

It reads patches where they sit in the text stream and lets each patch attend to the other
patches of its own image only (same segment and image id), with learned position embeddings
indexed by the patch's (H, W). The SigLIP tower that loads pretrained weights comes with the
conversion issue behind this same interface: patches + metadata in, features [B, L, width] out.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mogao_jax.data.batch import Kind
from mogao_jax.model import layers
from mogao_jax.model.config import ModelConfig


class TinyViT(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, patch_BLP, kind_BL, segment_BL, image_BL, pos_BL3):
    c = self.cfg
    dt = c.compute_dtype
    x = layers.dense(c.vit_width, (None, "embed"), c, bias=True, bias_axes=("embed",),
                     name="patch_embed")(patch_BLP)
    grid_idx = jnp.clip(pos_BL3[..., 1], 0, c.vit_grid - 1) * c.vit_grid + jnp.clip(
        pos_BL3[..., 2], 0, c.vit_grid - 1)
    x = x + nn.Embed(c.vit_grid * c.vit_grid, c.vit_width, name="pos_embed",
                     embedding_init=nn.with_logical_partitioning(
                         layers.EMBED_INIT, (None, "embed")))(grid_idx)
    is_vit = kind_BL == Kind.VIT
    mask_BLL = ((image_BL[:, :, None] == image_BL[:, None, :])
                & (segment_BL[:, :, None] == segment_BL[:, None, :])
                & is_vit[:, :, None] & is_vit[:, None, :])
    head_dim = c.vit_width // c.vit_heads
    for i in range(c.vit_depth):
      h = nn.LayerNorm(dtype=dt, name=f"ln_attn_{i}")(x)
      qkv = layers.dense((3, c.vit_heads, head_dim), ("embed", None, "heads", "kv"), c,
                         bias=True, bias_axes=(None, "heads", "kv"), name=f"qkv_{i}")(h)
      o = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask_BLL)
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
