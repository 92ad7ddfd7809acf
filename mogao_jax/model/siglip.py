"""The SigLIP vision tower (Hugging Face `SiglipVisionModel` architecture, without the pooling
head), in two forms sharing one set of weights:

* `SiglipTower` on images [B, H, W, C] in [-1, 1] -> last_hidden_state [B, N, width]: the
  standalone form, for the data pipeline and the parity test;
* `SiglipImages` on the per-image batch of VIT patches that model/vit.py gathers from the
  packed text stream (flattened patches + (H, W)), the Mogao understanding encoder when
  `model.vit = "siglip"`.

Variable resolution: the learned position table (a pos_grid x pos_grid grid) is resized to the
image's patch grid with exactly torch's bicubic (a = -0.75, align_corners=False), as
SiglipVisionEmbeddings.interpolate_pos_encoding does. Parameter names follow Hugging Face so the
import table (convert/mapping.py SIGLIP_*) is a list of renames.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mogao_jax.model import layers, vit


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  width: int
  depth: int
  heads: int
  mlp_dim: int
  patch_size: int
  pos_grid: int  # side of the learned position table (image_size // patch_size)
  channels: int = 3
  eps: float = 1e-6
  dtype: str = "float32"

  @classmethod
  def from_hf(cls, hf: dict) -> "SiglipConfig":
    """From a SiglipVisionConfig dict (or a SiglipConfig's `vision_config`)."""
    hf = hf.get("vision_config", hf)
    if hf.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
      raise ValueError(f"SigLIP hidden_act {hf['hidden_act']!r}: only gelu_pytorch_tanh")
    return cls(width=hf["hidden_size"], depth=hf["num_hidden_layers"],
               heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
               patch_size=hf["patch_size"], pos_grid=hf["image_size"] // hf["patch_size"],
               channels=hf.get("num_channels", 3), eps=hf.get("layer_norm_eps", 1e-6))


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's 1-D bicubic resize (align_corners=False, border clamp)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src).astype(int)
  w = np.zeros((n_out, n_in))
  for k in range(-1, 3):
    idx = np.clip(base + k, 0, n_in - 1)
    np.add.at(w, (np.arange(n_out), idx), _cubic(src - (base + k)))
  return w


def resize_pos(table_ND: jnp.ndarray, grid: int, h: int, w: int) -> jnp.ndarray:
  """Position table of a grid x grid image -> one for an h x w patch grid: [h * w, D]."""
  if (h, w) == (grid, grid):
    return table_ND
  t = table_ND.reshape(grid, grid, -1).astype(jnp.float32)
  mh = jnp.asarray(bicubic_matrix(grid, h), jnp.float32)
  mw = jnp.asarray(bicubic_matrix(grid, w), jnp.float32)
  return jnp.einsum("hi,wj,ijd->hwd", mh, mw, t).reshape(h * w, -1)


def _dense(features: int, axes: tuple[str, str], dt, name: str) -> nn.Dense:
  """nn.Dense (HF's names and [in, out] shapes, which the import table maps) with logical axes
  on kernel and bias, so the tower shards under the same rules as the rest of the model
  (under FSDP its 0.4B parameters at so400m size were replicated on every device)."""
  return nn.Dense(features, dtype=dt, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))


def _layer_norm(eps: float, dt, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(eps, dtype=dt, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ("embed",)))


_POS_INIT = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))


class EncoderLayer(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x_BLD, mask_BLL):
    c = self.cfg
    dt = jnp.dtype(c.dtype)
    hd = c.width // c.heads
    h = _layer_norm(c.eps, dt, "layer_norm1")(x_BLD)
    split = lambda y: y.reshape(*y.shape[:-1], c.heads, hd)  # noqa: E731
    # q/k/v/out kernels are [width, heads * head_dim]: "heads" names the flattened output.
    q, k, v = (split(_dense(c.width, ("embed", "heads"), dt, f"{n}_proj")(h)) for n in "qkv")
    o = layers.attention(q, k, v, mask_BLL)
    o = o.reshape(*o.shape[:-2], c.width)
    x_BLD = x_BLD + _dense(c.width, ("heads", "embed"), dt, "out_proj")(o)
    h = _layer_norm(c.eps, dt, "layer_norm2")(x_BLD)
    h = jax.nn.gelu(_dense(c.mlp_dim, ("embed", "mlp"), dt, "fc1")(h), approximate=True)
    return x_BLD + _dense(c.width, ("mlp", "embed"), dt, "fc2")(h)


class Encoder(nn.Module):
  """Patch embedding (a conv kernel [p, p, C, D] applied to flattened patches), + positions,
  the layers, post_layernorm."""
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, patches_BLP, pos_BLD, mask_BLL):
    c = self.cfg
    dt = jnp.dtype(c.dtype)
    p = c.patch_size
    kernel = self.param("patch_kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, None, None, "embed")),
                        (p, p, c.channels, c.width), jnp.float32)
    bias = self.param("patch_bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("embed",)), (c.width,), jnp.float32)
    x = patches_BLP.astype(dt) @ kernel.reshape(p * p * c.channels, c.width).astype(dt)
    x = x + bias.astype(dt) + pos_BLD.astype(dt)
    for i in range(c.depth):
      x = EncoderLayer(c, name=f"layers_{i}")(x, mask_BLL)
    return _layer_norm(c.eps, dt, "post_layernorm")(x)


class SiglipTower(nn.Module):
  """Images [B, H, W, C] in [-1, 1] (SigLIP's normalisation) -> features [B, N, width]."""
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, images_BHWC):
    c = self.cfg
    b, hh, ww, ch = images_BHWC.shape
    p = c.patch_size
    gh, gw = hh // p, ww // p
    patches = images_BHWC[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, ch)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * ch)
    table = self.param("position_embedding", _POS_INIT,
                       (c.pos_grid * c.pos_grid, c.width), jnp.float32)
    pos = resize_pos(table, c.pos_grid, gh, gw)[None]
    mask = jnp.ones((b, gh * gw, gh * gw), bool)
    return Encoder(c, name="encoder")(patches, pos, mask)


class SiglipImages(nn.Module):
  """The tower as Mogao's understanding encoder, on the per-image batch of model/vit.py
  (patches [I, N, p*p*C], their (H, W), valid [I, N]): positions from the table resized to
  grid x grid, indexed by each patch's (H, W); attention over an image's real patches only.
  Same parameter tree as SiglipTower."""
  cfg: SiglipConfig
  grid: int

  @nn.compact
  def __call__(self, patch_INP, pos_IN3, valid_IN):
    c = self.cfg
    table = self.param("position_embedding", _POS_INIT,
                       (c.pos_grid * c.pos_grid, c.width), jnp.float32)
    resized = resize_pos(table, c.pos_grid, self.grid, self.grid)
    pos_IND = resized[vit.grid_index(pos_IN3, self.grid)]
    return Encoder(c, name="encoder")(patch_INP, pos_IND, vit.patch_mask(valid_IN))


def from_model_config(c) -> SiglipConfig:
  """The tower of a ModelConfig with vit='siglip' (patch size from model.patch_dim = p*p*3)."""
  return SiglipConfig(width=c.vit_width, depth=c.vit_depth, heads=c.vit_heads,
                      mlp_dim=c.vit_mlp_dim, patch_size=round((c.patch_dim // 3) ** 0.5),
                      pos_grid=c.vit_pos_grid or c.vit_grid, eps=c.vit_norm_eps,
                      dtype=c.dtype)
