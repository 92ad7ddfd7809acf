"""Small building blocks: RMSNorm, projections with logical axes, SwiGLU, the attention core,
AdaLN modulation and the timestep embedding."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Qwen2 initialises linear layers with N(0, 0.02).
DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


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
    init = nn.initializers.zeros_init() if self.zero else DEFAULT_INIT
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
          bias_axes: Sequence[str] = (), zero: bool = False, name: str | None = None) -> Dense:
  """A Dense whose kernel (and bias) carry logical axis names for the sharding rules."""
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


def attention(q_BLHD, k_BLKD, v_BLKD, mask_BLL):
  """Grouped-query attention with a boolean mask; the softmax runs in float32.

  A query row with no visible key (a padding slot) gets a uniform softmax instead of NaN; its
  output is never read by a real token (nothing reads padding keys) and carries no loss.
  """
  return jax.nn.dot_product_attention(
      q_BLHD, k_BLKD, v_BLKD, mask=mask_BLL[:, None, :, :], implementation="xla")


def modulate(x_BLD, shift_BLD, scale_BLD):
  """AdaLN: scale is parameterised around 1 so a zero modulation is the identity."""
  return x_BLD * (1.0 + scale_BLD) + shift_BLD


def timestep_embedding(t_BL, dim: int, max_period: float = 10_000.0):
  """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as DiT/SD3 do): [B, L, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t_BL.astype(jnp.float32) * 1000.0)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
