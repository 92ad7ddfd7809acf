"""The image codec: how an image becomes vision-stream (CVAE / NVAE) slots and how generated
slots become an image again, chosen by `config.data.latents`:

* "pixels": an image's own pixel patches (`data.patch_size`) stand in for latents: the tiny
  default, no VAE;
* "precomputed" / "encode": the latents of the VAE in `data.vae` (a diffusers AutoencoderKL
  directory, model/vae.py), patchified `data.latent_patch` x `data.latent_patch`; precomputed
  ones come with the records (encode_latents), "encode" ones are made in the train input step
  (`fill_latents`, jitted, on the devices) from the row's images (`vis_pixels`).

Both codecs turn uint8 images [N, H, W, 3] into slot patches [N, n, latent_dim] (`encode`) and
back (`decode`), batched over images; the sampler, evaluate, the sample grids and the HTML
reports see images only through `decode`. Build one with convert/vae.py `codec_for(config)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mogao_jax.data import images as images_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model import image_batch
from mogao_jax.model import vae as vae_lib


def to_unit(pixels) -> jnp.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1] (as images.patchify and the VAE expect)."""
  return jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0


class PixelCodec:
  """Pixel patches as the vision-stream latents (latent_dim = patch_size**2 * 3)."""

  def __init__(self, image_size: int, patch_size: int):
    self.image_size, self.patch_size = image_size, patch_size
    g = image_size // patch_size
    self.grid, self.latent_dim = (g, g), patch_size * patch_size * 3

  def encode(self, pixels_NHW3: np.ndarray) -> np.ndarray:
    return np.stack([images_lib.patchify(p, self.patch_size) for p in pixels_NHW3])

  def decode(self, latents_NnD) -> np.ndarray:
    return np.stack([images_lib.unpatchify(z, self.grid) for z in np.asarray(latents_NnD)])


class VAECodec:
  """An AutoencoderKL's normalised latents, patchified latent_patch x latent_patch."""

  def __init__(self, cfg: vae_lib.VAEConfig, params, image_size: int, latent_patch: int):
    f = cfg.factor
    if image_size % (f * latent_patch):
      raise ValueError(f"config.data.image_size={image_size} is not divisible by the VAE's "
                       f"downsampling {f} x config.data.latent_patch={latent_patch}")
    self.cfg, self.params, self.image_size, self.latent_patch = cfg, params, image_size, latent_patch
    g = image_size // (f * latent_patch)
    self.grid, self.latent_dim = (g, g), cfg.latent_channels * latent_patch ** 2
    model = vae_lib.AutoencoderKL(cfg)
    self._encode = jax.jit(lambda p, x: vae_lib.patchify_latents(
        model.apply({"params": p}, x, method="encode"), latent_patch))
    self._decode = jax.jit(lambda p, z: model.apply(
        {"params": p}, vae_lib.unpatchify_latents(z, g, g, latent_patch), method="decode"))

  def encode_unit(self, params, x_NHW3):
    """float [-1, 1] images -> slot patches [N, n, latent_dim] (traceable)."""
    return self._encode(params, x_NHW3)

  def encode(self, pixels_NHW3: np.ndarray) -> np.ndarray:
    return np.asarray(self._encode(self.params, to_unit(pixels_NHW3)))

  def decode(self, latents_NnD) -> np.ndarray:
    x = np.asarray(self._decode(self.params, jnp.asarray(latents_NnD, jnp.float32)))
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)

  def fill_latents(self, params, batch: dict) -> dict:
    """The train input step ("encode"): `vis_pixels` [B, K, H, W, 3] (the row's images with
    vision copies, in image-id order: data/packing.py) -> their latent patches in the CVAE /
    NVAE slots' `vis_latent`; the batch without `vis_pixels`, as the train step reads it."""
    batch = dict(batch)
    pix = batch.pop("vis_pixels")
    b, k = pix.shape[:2]
    z_BKnD = self.encode_unit(params, to_unit(pix.reshape(b * k, *pix.shape[2:])))
    key_BL = image_batch.image_keys(batch["vis_kind"], batch["vis_image"], batch["vis_pos"],
                                    (Kind.CVAE, Kind.NVAE), k, self.grid)
    batch["vis_latent"] = image_batch.to_slots(z_BKnD, key_BL)
    return batch


def vision_images(l_vis: int, grid: tuple[int, int]) -> int:
  """Images with vision copies one row holds when every image is one grid: the K of
  `vis_pixels` (each such image takes grid slots at least)."""
  return max(1, l_vis // (grid[0] * grid[1]))
