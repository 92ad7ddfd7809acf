"""Model FLOPs of one train step, counted analytically from the config and the batch's metadata
(the MaxText way: 2 FLOPs per multiply-add of every matmul, attention by its visible pairs,
x3 for forward + backward). Elementwise work (norms, RoPE, softmax, the optimizer) is left out.

"Real" counts what the model needs: each pathway's matmuls by its real (non-padding) slots and
attention by the pairs the mask lets through (mogao_jax.model.masks.visibility). "Padded"
counts what a dense implementation executes: every slot and the full L x L score matrix; that
one is comparable with XLA's own count.
"""

from __future__ import annotations

import numpy as np

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model import masks
from mogao_jax.model.mogao import T_EMBED_DIM

FWD_BWD = 3  # backward = 2 x forward (gradients w.r.t. activations and weights)


def pathway_matmul_per_token(m) -> int:
  """Forward FLOPs of one pathway's matmuls per slot in one layer: q, k, v, o and the SwiGLU."""
  d, hd = m.width, m.head_dim
  qkvo = 2 * d * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
  return qkvo + 2 * 3 * d * m.mlp_dim


def attention_per_pair(m) -> int:
  """Forward FLOPs per visible (query, key) pair in one layer: q.k and p.v, over all heads."""
  return 2 * 2 * m.num_heads * m.head_dim


def vit_per_token(m) -> int:
  """The tiny ViT + connector per VIT slot (matmuls only)."""
  e, p = m.vit_width, m.patch_dim
  per_layer = 2 * e * 3 * e + 2 * e * e + 2 * 2 * e * 4 * e
  return 2 * p * e + m.vit_depth * per_layer + 2 * e * m.width + 2 * m.width * m.width


def vision_extra_per_token(m) -> int:
  """Vision-stream matmuls outside the stack, per slot: latent in and out."""
  return 2 * m.latent_dim * m.width + 2 * m.width * m.latent_dim


def conditioning_per_copy(m) -> int:
  """Per image copy (Mogao.conditioning): time embedding MLP, adaLN-single and final modulation."""
  d = m.width
  return 2 * T_EMBED_DIM * d + 2 * d * d + 2 * d * 6 * d + 2 * d * 2 * d


def counts(batch: dict, mcfg) -> dict:
  """Slot and pair counts of a numpy batch: real text / vision slots, VIT slots, visible joint
  pairs, visible ViT pairs, and the padded capacities."""
  meta = {f: np.concatenate([batch[f"txt_{f}"], batch[f"vis_{f}"]], axis=1)
          for f in ("segment", "kind", "image", "pos")}
  other = masks.parse_table(mcfg.mask_other)
  same = masks.parse_table(mcfg.mask_same)
  pairs = int(np.asarray(masks.visibility(meta, meta, other, same)).sum())
  kind, img, seg = batch["txt_kind"], batch["txt_image"], batch["txt_segment"]
  is_vit = kind == Kind.VIT
  vit_pairs = int(((img[:, :, None] == img[:, None, :]) & (seg[:, :, None] == seg[:, None, :])
                   & is_vit[:, :, None] & is_vit[:, None, :]).sum())
  b, l_txt = kind.shape
  l_vis = batch["vis_kind"].shape[1]
  return {"rows": b, "txt": int((batch["txt_segment"] > 0).sum()),
          "vis": int((batch["vis_segment"] > 0).sum()), "vit": int(is_vit.sum()),
          "pairs": pairs, "vit_pairs": vit_pairs, "l_txt": l_txt, "l_vis": l_vis}


def step_flops(batch: dict, mcfg, padded: bool = False) -> dict:
  """Train-step FLOPs (fwd + bwd) by part: text pathway, vision pathway, joint attention, ViT,
  LM head; 'total'. padded=True counts every slot, dense L x L attention and the ViT's whole
  image batch instead."""
  c = counts(batch, mcfg)
  b = c["rows"]
  # The program runs the LM head over every text-stream slot and the ViT over its image batch:
  # vit_capacity images of vit_grid**2 patches per row (model/vit.py), attention within each.
  k = batch_lib.vit_capacity(c["l_txt"], mcfg.vit_grid, mcfg.vit_images)
  n = mcfg.vit_grid ** 2
  # ... and the timestep conditioning over its 2 * vis_capacity + 1 image copies per row.
  k_vis = batch_lib.vis_capacity(c["l_vis"], mcfg.vision_grid, mcfg.vis_images)
  if padded:
    n_txt, n_vis, n_vit = b * c["l_txt"], b * c["l_vis"], b * k * n
  else:
    n_txt, n_vis, n_vit = c["txt"], c["vis"], c["vit"]
  l = c["l_txt"] + c["l_vis"]
  pairs = b * l * l if padded else c["pairs"]
  vit_pairs = b * k * n * n if padded else c["vit_pairs"]
  m, depth = mcfg, mcfg.depth
  vit_attn = m.vit_depth * 2 * 2 * m.vit_width * vit_pairs
  parts = {
      "text_pathway": depth * n_txt * pathway_matmul_per_token(m),
      "vision_pathway": depth * n_vis * pathway_matmul_per_token(m)
                        + n_vis * vision_extra_per_token(m)
                        + b * (2 * k_vis + 1) * conditioning_per_copy(m),
      "attention": depth * pairs * attention_per_pair(m),
      "vit": n_vit * vit_per_token(m) + vit_attn,
      "lm_head": n_txt * 2 * m.width * m.vocab_size,
  }
  parts = {k: FWD_BWD * v for k, v in parts.items()}
  parts["total"] = sum(parts.values())
  return parts
