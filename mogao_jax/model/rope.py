"""IL-RoPE: rotary embeddings from 3-D (T, H, W) positions with an interleaved frequency split.

With head_dim d there are d/2 rotation pairs (Qwen2's rotate-half layout: pair i rotates dims
i and i + d/2 with frequency theta**(-2i/d)). The first 3/4 of the pairs are dealt out round
robin T, H, W, T, H, W, ...; the last quarter all go to T (MOGAO.md section 3).

A pair assigned to H rotates by T + H, a pair assigned to W by T + W, and a T pair by T. The T
offset on the H/W pairs is Qwen2-VL's M-RoPE convention. It is what makes a text-only row
(H = W = 0 everywhere) exactly ordinary 1-D RoPE over T, so the text pathway matches a plain
Qwen2 model; between two patches of one image (same T) it leaves pure row/column offsets; and
shifting every T by a constant still leaves all attention scores unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

T_AXIS, H_AXIS, W_AXIS = 0, 1, 2


def pair_axes(head_dim: int) -> np.ndarray:
  """Which position axis (0=T, 1=H, 2=W) drives each of the head_dim/2 rotation pairs."""
  if head_dim % 2:
    raise ValueError(f"model.head_dim must be even for RoPE, got {head_dim}")
  n_pairs = head_dim // 2
  n_interleaved = 3 * ((3 * n_pairs // 4) // 3)  # the first 3/4, a whole number of T,H,W rounds
  axes = np.zeros(n_pairs, np.int32)
  axes[:n_interleaved] = np.arange(n_interleaved) % 3
  return axes


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
  return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def rope_angles(pos_BL3: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
  """Rotation angle of every pair for every slot: [B, L, head_dim/2], float32."""
  axes = pair_axes(head_dim)
  is_h = jnp.asarray(axes == H_AXIS, jnp.float32)
  is_w = jnp.asarray(axes == W_AXIS, jnp.float32)
  pos = pos_BL3.astype(jnp.float32)
  t, h, w = pos[..., 0:1], pos[..., 1:2], pos[..., 2:3]
  pos_BLP = t + h * is_h + w * is_w
  return pos_BLP * jnp.asarray(inv_freq(head_dim, theta), jnp.float32)


def apply_rope(x_BLHD: jnp.ndarray, angles_BLP: jnp.ndarray) -> jnp.ndarray:
  """Rotates q or k (rotate-half layout, as Hugging Face Qwen2)."""
  half = x_BLHD.shape[-1] // 2
  cos = jnp.cos(angles_BLP)[:, :, None, :]
  sin = jnp.sin(angles_BLP)[:, :, None, :]
  x = x_BLHD.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHD.dtype)
