"""The generation encoder: diffusers' `AutoencoderKL` architecture in Flax (NHWC).

    vae = AutoencoderKL(cfg)
    z = vae.apply(v, images, method="encode")      # images [B, H, W, C] in [-1, 1] -> latents
    x = vae.apply(v, z, method="decode")           # latents -> images

`encode` returns the posterior MEAN, normalised as the diffusion model sees it:
(mean - shift_factor) * scaling_factor; `decode` undoes that first. Configs: SDXL / SD-style
(4 latent channels, quant convs, scaling 0.13025 / 0.18215) and FLUX-style (16 channels, no quant
convs, shift 0.1159, scaling 0.3611) both come from the diffusers config.json (`from_hf`).
Module names mirror diffusers' ("encoder/down_blocks_0/resnets_1/conv1") so the import table
(convert/mapping.py VAE rule) is a rename: "_<n>" -> ".<n>", scale/kernel -> weight.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  in_channels: int = 3
  out_channels: int = 3
  norm_num_groups: int = 32
  scaling_factor: float = 0.13025  # SDXL
  shift_factor: float = 0.0
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @property
  def factor(self) -> int:
    """Spatial downsampling: 2 per down block after the first."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_hf(cls, hf: dict, source: str = "config.json") -> "VAEConfig":
    for key, want in (("down_block_types", "DownEncoderBlock2D"),
                      ("up_block_types", "UpDecoderBlock2D")):
      if any(t != want for t in hf.get(key, [want])):
        raise ValueError(f"{source}: {key}={hf[key]} unsupported (only {want})")
    if hf.get("act_fn", "silu") != "silu":
      raise ValueError(f"{source}: act_fn={hf['act_fn']!r} unsupported (only silu)")
    return cls(
        block_out_channels=tuple(hf["block_out_channels"]),
        layers_per_block=hf.get("layers_per_block", 1),
        latent_channels=hf.get("latent_channels", 4), in_channels=hf.get("in_channels", 3),
        out_channels=hf.get("out_channels", 3), norm_num_groups=hf.get("norm_num_groups", 32),
        scaling_factor=float(hf.get("scaling_factor", 0.18215)),
        shift_factor=float(hf.get("shift_factor") or 0.0),
        use_quant_conv=hf.get("use_quant_conv", True),
        use_post_quant_conv=hf.get("use_post_quant_conv", True),
        mid_block_add_attention=hf.get("mid_block_add_attention", True))


FLUX_LIKE = dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159)


def _conv(ch, name, k=3, stride=1, padding=1):
  return nn.Conv(ch, (k, k), strides=stride, padding=padding, name=name)


def _norm(cfg, name):
  return nn.GroupNorm(num_groups=cfg.norm_num_groups, epsilon=1e-6, name=name)


class ResnetBlock(nn.Module):
  cfg: VAEConfig
  out_ch: int

  @nn.compact
  def __call__(self, x):
    h = _conv(self.out_ch, "conv1")(nn.silu(_norm(self.cfg, "norm1")(x)))
    h = _conv(self.out_ch, "conv2")(nn.silu(_norm(self.cfg, "norm2")(h)))
    if x.shape[-1] != self.out_ch:
      x = _conv(self.out_ch, "conv_shortcut", k=1, padding=0)(x)
    return x + h


class Attention(nn.Module):
  """diffusers' single-head spatial self-attention of the VAE's mid block."""
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_BHWC):
    b, hh, ww, ch = x_BHWC.shape
    h = _norm(self.cfg, "group_norm")(x_BHWC).reshape(b, hh * ww, 1, ch)
    q, k, v = (nn.Dense(ch, name=f"to_{n}")(h) for n in "qkv")
    o = jax.nn.dot_product_attention(q, k, v, implementation="xla").reshape(b, hh * ww, ch)
    return x_BHWC + nn.Dense(ch, name="to_out_0")(o).reshape(b, hh, ww, ch)


class MidBlock(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    ch = x.shape[-1]
    x = ResnetBlock(self.cfg, ch, name="resnets_0")(x)
    if self.cfg.mid_block_add_attention:
      x = Attention(self.cfg, name="attentions_0")(x)
    return ResnetBlock(self.cfg, ch, name="resnets_1")(x)


class Resample(nn.Module):
  """diffusers' Downsample2D (pad right/bottom by one, VALID stride-2 conv) or Upsample2D
  (nearest 2x, then a conv); one `conv` either way, as in their checkpoints."""
  ch: int
  down: bool

  @nn.compact
  def __call__(self, x):
    if self.down:
      return _conv(self.ch, "conv", stride=2, padding=((0, 1), (0, 1)))(x)
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.ch, "conv")(x)


class Stage(nn.Module):
  """A DownEncoderBlock2D / UpDecoderBlock2D: n resnets, then an optional resampler."""
  cfg: VAEConfig
  ch: int
  n: int
  resample: str  # "down" | "up" | ""

  @nn.compact
  def __call__(self, x):
    for j in range(self.n):
      x = ResnetBlock(self.cfg, self.ch, name=f"resnets_{j}")(x)
    if self.resample:
      sampler = "downsamplers_0" if self.resample == "down" else "upsamplers_0"
      x = Resample(self.ch, self.resample == "down", name=sampler)(x)
    return x


class Encoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    x = _conv(c.block_out_channels[0], "conv_in")(x)
    last = len(c.block_out_channels) - 1
    for i, ch in enumerate(c.block_out_channels):
      x = Stage(c, ch, c.layers_per_block, "down" if i < last else "",
                name=f"down_blocks_{i}")(x)
    x = MidBlock(c, name="mid_block")(x)
    x = nn.silu(_norm(c, "conv_norm_out")(x))
    return _conv(2 * c.latent_channels, "conv_out")(x)


class Decoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z):
    c = self.cfg
    chans = tuple(reversed(c.block_out_channels))
    x = _conv(chans[0], "conv_in")(z)
    x = MidBlock(c, name="mid_block")(x)
    for i, ch in enumerate(chans):
      x = Stage(c, ch, c.layers_per_block + 1, "up" if i < len(chans) - 1 else "",
                name=f"up_blocks_{i}")(x)
    x = nn.silu(_norm(c, "conv_norm_out")(x))
    return _conv(c.out_channels, "conv_out")(x)


class AutoencoderKL(nn.Module):
  cfg: VAEConfig

  def setup(self):
    c = self.cfg
    self.encoder = Encoder(c)
    self.decoder = Decoder(c)
    if c.use_quant_conv:
      self.quant_conv = _conv(2 * c.latent_channels, "quant_conv", k=1, padding=0)
    if c.use_post_quant_conv:
      self.post_quant_conv = _conv(c.latent_channels, "post_quant_conv", k=1, padding=0)

  def moments(self, images_BHWC):
    """Posterior (mean, logvar), each [B, H/f, W/f, latent_channels], unnormalised."""
    h = self.encoder(images_BHWC)
    if self.cfg.use_quant_conv:
      h = self.quant_conv(h)
    return jnp.split(h, 2, axis=-1)

  def encode(self, images_BHWC):
    mean, _ = self.moments(images_BHWC)
    return (mean - self.cfg.shift_factor) * self.cfg.scaling_factor

  def decode(self, latents_BhwC):
    z = latents_BhwC / self.cfg.scaling_factor + self.cfg.shift_factor
    if self.cfg.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, images_BHWC):
    return self.decode(self.encode(images_BHWC))


def patchify_latents(latents_BhwC, p: int = 2):
  """[B, h, w, C] -> [B, (h/p)(w/p), p*p*C], patch order (row, col, channel) as
  data/images.patchify: the vision-stream slots of a VAE-latent config (latent_dim = p*p*C)."""
  b, h, w, c = latents_BhwC.shape
  x = latents_BhwC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify_latents(patches_BNP, grid_h: int, grid_w: int, p: int = 2):
  b, _, d = patches_BNP.shape
  c = d // (p * p)
  x = patches_BNP.reshape(b, grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid_h * p, grid_w * p, c)
