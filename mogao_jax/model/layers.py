"""Small building blocks: RMSNorm, projections with logical axes, SwiGLU, the attention core,
AdaLN modulation and the timestep embedding."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Small learned tables (the tiny ViT's positions) start N(0, 0.02), as Qwen2's embeddings.
EMBED_INIT = nn.initializers.normal(stddev=0.02)


def embed_init(cfg):
  """Token embeddings: N(0, 0.02) when tied to the LM head (the logits start small); N(0, 1)
  untied (unit-scale tokens, as the unit-scale patch embeddings beside them). Why the latter:
  words that occur in the same contexts (the world's colour names) drift towards one shared
  vector under the language-model loss; at N(0, 1) what tells them apart stays large, and the
  image pathway can read it (benchmarks/LEARNING.md, "The world's learning curve")."""
  return nn.initializers.normal(stddev=0.02 if cfg.tie_embeddings else 1.0)


def rms_norm(cfg, axes: tuple[str, ...] = ("embed",), name: str | None = None) -> nn.RMSNorm:
  return nn.RMSNorm(
      epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, axes))


class Dense(nn.Module):
  """A projection contracting the last `n_in` input dims into `features` (an int or a tuple).

  Why not nn.DenseGeneral: it creates its kernel flat (2-D) and reshapes afterwards, so a
  logical-partitioning box with one name per real dimension is applied to the wrong rank
  once sharding rules are active. Here the kernel is created at its full shape.
  """
  features: int | tuple[int, ...]
  axes: tuple  # logical names of the kernel's dims (inputs, then features)
  dtype: object = jnp.float32
  n_in: int = 1
  use_bias: bool = False
  bias_axes: tuple = ()
  zero: bool = False

  @nn.compact
  def __call__(self, x):
    feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[x.ndim - self.n_in:]
    init = nn.initializers.zeros_init() if self.zero else nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", in_axis=tuple(range(self.n_in)),
        out_axis=tuple(range(self.n_in, self.n_in + len(feats))))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.axes)),
                        in_shape + feats, jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), tuple(self.bias_axes)), feats, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def dense(features, axes: Sequence[str], cfg, *, n_in: int = 1, bias: bool = False,
          bias_axes: Sequence[str] = (), zero: bool = False,
          name: str | None = None) -> Dense:
  """A Dense whose kernel (and bias) carry logical axis names for the sharding rules.

  Kernels start with variance 1 / fan-in (LeCun normal; zero=True: zeros). Why not Qwen2's
  N(0, 0.02): 0.02 is 1 / sqrt(fan-in) at a fan-in of 2500, so at Qwen2.5-7B's width (3584:
  0.017) the two nearly agree, but at the tiny configs' width 128 (0.088) every projection
  shrinks its input ~4x: a block then adds ~5% to a residual stream that the unit-scale patch
  embedding dominates, and the world's attributes were learned hundreds of steps later
  (benchmarks/LEARNING.md, "The world's learning curve"). Pretrained Qwen2 / SigLIP weights
  replace the init anyway."""
  return Dense(features=features, axes=tuple(axes), dtype=cfg.compute_dtype, n_in=n_in,
               use_bias=bias, bias_axes=tuple(bias_axes), zero=zero, name=name)


class SwiGLU(nn.Module):
  """Qwen2's MLP: down(silu(gate(x)) * up(x))."""
  cfg: object

  @nn.compact
  def __call__(self, x_BLD):
    c = self.cfg
    gate = dense(c.mlp_dim, ("embed", "mlp"), c, name="gate_proj")(x_BLD)
    up = dense(c.mlp_dim, ("embed", "mlp"), c, name="up_proj")(x_BLD)
    h_BLF = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(c.width, ("mlp", "embed"), c, name="down_proj")(h_BLF)


@jax.checkpoint
def attention(q_BLHD, k_BLKD, v_BLKD, mask_BLL):
  """Grouped-query attention with a boolean mask; the softmax runs in float32.

  A query row with no visible key (a padding slot) gets a uniform softmax instead of NaN; its
  output is never read by a real token (nothing reads padding keys) and carries no loss.

  Rematerialised (jax.checkpoint): the backward pass recomputes the scores and the softmax
  from q, k, v and the mask instead of keeping the [B, H, L, L] probabilities of every layer
  (inside the scanned stack those were stacked per layer, written in the forward pass and read
  back in the backward pass: ~15% of the CPU train step in the profile, a quarter of its
  temporaries). Same operations recomputed: bit-identical results (benchmarks/RESULTS.md).
  """
  return jax.nn.dot_product_attention(
      q_BLHD, k_BLKD, v_BLKD, mask=mask_BLL[:, None, :, :], implementation="xla")


def modulate(x_BLD, shift_BLD, scale_BLD):
  """AdaLN: scale is parameterised around 1 so a zero modulation is the identity."""
  return x_BLD * (1.0 + scale_BLD) + shift_BLD


def sincos_2d(h_BL, w_BL, dim: int, max_period: float = 10_000.0):
  """Fixed 2-D sin-cos embedding of patch row h and column w (MAE / BAGEL's latent position
  embedding): [B, L, dim], the first half from h, the second from w; dim % 4 == 0.

  Why beside IL-RoPE: RoPE only tells a patch where it is relative to other slots, so a noisy
  patch must find its absolute place through attention to the text before the image; with this
  table added to the vision-stream input it knows it at once, as in BAGEL. (Not yet ablated on
  the world: 300 t2i steps gave patch-wise noise with and without it.)"""
  quarter = dim // 4
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(quarter, dtype=jnp.float32) / quarter)
  def one(x):
    args = x.astype(jnp.float32)[..., None] * freqs
    return [jnp.sin(args), jnp.cos(args)]
  return jnp.concatenate(one(h_BL) + one(w_BL), axis=-1)


def timestep_embedding(t_BL, dim: int, max_period: float = 10_000.0):
  """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as DiT/SD3 do): [B, L, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t_BL.astype(jnp.float32) * 1000.0)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
