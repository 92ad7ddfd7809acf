"""The model's static configuration, validated once from the `model` section of the config."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from mogao_jax import config_schema
from mogao_jax.model import masks


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  qkv_bias: bool
  qk_norm: bool
  rope_theta: float
  tie_embeddings: bool
  norm_eps: float
  latent_dim: int
  patch_dim: int
  vit_width: int
  vit_depth: int
  vit_heads: int
  vit_grid: int
  mask_other: str
  mask_same: str
  scan_layers: bool
  remat: str
  dtype: str
  # The understanding encoder: "tiny" (vit.TinyViT, from scratch) or "siglip" (model/siglip.py,
  # loads SigLIP weights via init.vit). Defaults keep configs written before these keys valid.
  vit: str = "tiny"
  vit_mlp_dim: int = 0  # siglip: the MLP width (the tiny ViT uses 4 * vit_width)
  vit_pos_grid: int = 0  # siglip: side of the learned position table; 0 = vit_grid
  vit_norm_eps: float = 1e-6  # siglip: LayerNorm epsilon
  # Images with VIT copies per row the encoder batch holds (batch.vit_capacity; 0 = l_txt //
  # vit_grid**2). The packer enforces it; a row never holds more.
  vit_images: int = 0
  # Images with vision (CVAE / NVAE) copies per row that the per-image timestep modulation is
  # computed for (batch.vis_capacity; 0 = l_vis // vision_grid**2). The packer enforces it too.
  vis_images: int = 0
  # Vision-stream slots per image side: the latent patch grid of one image (image_size / (VAE
  # factor x latent_patch)); 0 = vit_grid, which is that grid for pixel patches only. With
  # pretrained parts the SigLIP grid and the latent grid differ (data/latents.py checks it).
  vis_grid: int = 0
  # Absolute position of vision-stream (CVAE / NVAE) slots added to their input: "sincos" (a
  # fixed 2-D table of the patch row and column, as BAGEL's latent_pos_embed) | "none" (IL-RoPE
  # only). No parameters either way. The default is "none" so that a config written before the
  # key existed (an older checkpoint's config.json) still builds the model it trained.
  vis_pos_embed: str = "none"
  # The joint attention (model/attention.py): "dense" builds the L x L mask (the CPU reference);
  # "blockwise" computes it per block of `attention_block` slots and skips invisible blocks;
  # "flash" is the fused Pallas kernel of the same algorithm (model/flash.py; GPU, or CPU in
  # interpret mode).
  attention: str = "dense"
  attention_block: int = 128
  # What the vision head predicts: "velocity" (v = x1 - x0, as Mogao / SD3) or "x1" (the clean
  # latent, converted to a velocity inside the model, so loss and sampler are unchanged).
  predict: str = "velocity"
  # model/edit_skip.py: each NVAE slot's input adds a zero-initialised projection of its
  # source image's clean latent at the same (H, W) cell (InstructPix2Pix-like). Off: the
  # paper's model, no extra parameter.
  edit_skip: bool = False

  @property
  def vision_grid(self) -> int:
    return self.vis_grid or self.vit_grid

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "ModelConfig":
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields
               if f.name not in c and f.default is dataclasses.MISSING]
    if missing:
      raise ValueError(f"config is missing keys {['model.' + n for n in missing]}")
    # Each key's type and range; partial: a saved config of an older version may lack keys
    # (the dataclass defaults stand in) or hold ones no longer read.
    config_schema.validate(c, "model.", partial=True)
    cfg = cls(**{f.name: c[f.name] for f in fields if f.name in c})
    cfg.validate()
    return cfg

  def validate(self) -> None:
    """The rules between keys (each key's own range: config_schema)."""
    def need(ok, key, why):
      if not ok:
        raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")
    need(self.num_heads % self.num_kv_heads == 0, "num_heads",
         f"must be a multiple of model.num_kv_heads={self.num_kv_heads}")
    need(self.head_dim % 2 == 0, "head_dim", "must be even for RoPE")
    need(self.vit_width % self.vit_heads == 0, "vit_width",
         f"must be a multiple of model.vit_heads={self.vit_heads}")
    need(self.vis_pos_embed == "none" or self.width % 4 == 0, "width",
         "must be a multiple of 4 with model.vis_pos_embed='sincos'")
    if self.vit == "siglip":
      need(self.vit_mlp_dim > 0, "vit_mlp_dim", "must be positive with model.vit='siglip'")
      need(self.patch_dim % 3 == 0 and round((self.patch_dim // 3) ** 0.5) ** 2 * 3
           == self.patch_dim, "patch_dim", "must be p * p * 3 with model.vit='siglip'")
    masks.parse_table(self.mask_other, "model.mask_other")
    masks.parse_table(self.mask_same, "model.mask_same")
