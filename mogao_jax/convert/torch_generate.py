"""Prompt -> text and images with the exported model in plain PyTorch (torch, plus `tokenizers`
for the text and `diffusers` for a VAE run; no mogao_jax import). Copied next to the export.

    from torch_generate import Generator
    g = Generator("export_dir")
    doc = g.generate("a red circle left of a blue square", image=True, max_tokens=16)
    # doc: [("text", "..."), ("image", uint8 [H, W, 3]), ...], the generated parts in order

The sampler of mogao_jax/sample/engine.py without its KV cache: every model call is one full
forward over the document so far (the same visibility mask, so the same numbers as the cache,
to float32 order of summation). A document is BOS, the prompt, then greedy decoding; `<img>`
(written by the model, or forced with image=True) generates an image: its NVAE slots are
integrated from Gaussian noise by the Euler ODE on the shifted time grid, with the multi-modal
classifier-free guidance (none / image / image + text conditions, one forward pass); the
latent becomes pixels by the run's codec (pixel patches, or the diffusers VAE in ``vae/``) and
goes back in as a clean image (VIT patches + codec latents), then `</img>`.
``generation.json`` holds the ids and image geometry. Pass ``noise`` (one [n, latent_dim]
array per image) to reproduce another sampler's draw exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("mogao_torch_model",
                                               os.path.join(_HERE, "torch_model.py"))
torch_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_model)

TXT, VIT, CVAE, NVAE = torch_model.TXT, torch_model.VIT, torch_model.CVAE, torch_model.NVAE
BRANCH_OFFSET = 1 << 20  # image ids of the three guidance branches kept apart, as the sampler


def time_grid(steps: int, shift: float) -> torch.Tensor:
  """steps + 1 times from 0 (noise) to 1 (data), shifted towards noise (float32)."""
  sigma = 1.0 - torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)
  return 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)


def guide(v_none, v_img, v_full, g_img: float, g_txt: float):
  """Multi-modal CFG: v(none) + g_img (v(img) - v(none)) + g_txt (v(img, txt) - v(img))."""
  return v_none + g_img * (v_img - v_none) + g_txt * (v_full - v_img)


def patchify(pixels: np.ndarray, p: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [(H/p)(W/p), p*p*3] in [-1, 1], row-major patches."""
  h, w = pixels.shape[0] // p, pixels.shape[1] // p
  x = pixels.astype(np.float32) / 127.5 - 1.0
  return x.reshape(h, p, w, p, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, p * p * 3)


def unpatchify(patches: np.ndarray, gh: int, gw: int, p: int, c: int) -> np.ndarray:
  """float [gh*gw, p*p*c] -> [gh*p, gw*p, c] (inverse of patchify's layout)."""
  return patches.reshape(gh, gw, p, p, c).transpose(0, 2, 1, 3, 4).reshape(gh * p, gw * p, c)


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


class Codec:
  """Latent patches <-> uint8 images: the pixel patches, or the diffusers AutoencoderKL."""

  def __init__(self, path: str, g: dict):
    self.g, self.vae = g, None
    if g["codec"] == "vae":
      from diffusers import AutoencoderKL  # pylint: disable=g-import-not-at-top
      self.vae = AutoencoderKL.from_pretrained(os.path.join(path, "vae")).float().eval()

  def decode(self, z_nD: np.ndarray) -> np.ndarray:
    g = self.g
    if self.vae is None:
      return to_uint8(unpatchify(z_nD, *g["latent_grid"], g["patch_size"], 3))
    c = self.vae.config
    lat = unpatchify(z_nD, *g["latent_grid"], g["latent_patch"], c.latent_channels)
    lat = torch.from_numpy(lat).permute(2, 0, 1)[None]
    with torch.no_grad():
      x = self.vae.decode(lat / c.scaling_factor + (c.shift_factor or 0.0)).sample
    return to_uint8(x[0].permute(1, 2, 0).numpy())

  def encode(self, pixels: np.ndarray) -> np.ndarray:
    g = self.g
    if self.vae is None:
      return patchify(pixels, g["patch_size"])
    c = self.vae.config
    x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
      mean = self.vae.encode(x).latent_dist.mean
    z = ((mean - (c.shift_factor or 0.0)) * c.scaling_factor)[0].permute(1, 2, 0).numpy()
    p = g["latent_patch"]
    h, w = z.shape[0] // p, z.shape[1] // p
    return z.reshape(h, p, w, p, -1).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)


class Document:
  """The slots of one sampled document, both streams, in the packed-batch fields."""

  def __init__(self, patch_dim: int, latent_dim: int):
    self.t, self.n_img = 0, 0
    self.txt = {k: [] for k in ("kind", "image", "pos", "token", "patch")}
    self.vis = {k: [] for k in ("kind", "image", "pos", "latent")}
    self.dims = (patch_dim, latent_dim)

  def tokens(self, ids):
    for i in ids:
      self._add(self.txt, TXT, 0, (self.t, 0, 0), token=i, data=np.zeros(self.dims[0]))
      self.t += 1

  def image(self, vit_patches, vit_grid, latents, latent_grid):
    """A clean image at one T step: VIT copies (text stream) and CVAE copies (vision)."""
    self.n_img += 1
    for stream, kind, data, (gh, gw) in ((self.txt, VIT, vit_patches, vit_grid),
                                         (self.vis, CVAE, latents, latent_grid)):
      for k, row in enumerate(data):
        self._add(stream, kind, self.n_img, (self.t, k // gw, k % gw), token=0, data=row)
    self.t += 1

  @staticmethod
  def _add(stream, kind, image, pos, token, data):
    stream["kind"].append(kind)
    stream["image"].append(image)
    stream["pos"].append(pos)
    stream["patch" if "patch" in stream else "latent"].append(np.asarray(data, np.float32))
    if "token" in stream:
      stream["token"].append(token)

  def batch(self, noisy=None) -> tuple[dict, torch.Tensor]:
    """(batch, vis_t) of one row; ``noisy`` = (x [R, n, D], t, latent_grid): R copies of the
    next image's NVAE slots, copy r with image id + r * BRANCH_OFFSET."""
    txt, vis = dict(self.txt), {k: list(v) for k, v in self.vis.items()}
    vis_t = [1.0] * len(vis["kind"])
    if noisy is not None:
      x, t, (gh, gw) = noisy
      for r in range(x.shape[0]):
        for k in range(x.shape[1]):
          vis["kind"].append(NVAE)
          vis["image"].append(self.n_img + 1 + r * BRANCH_OFFSET)
          vis["pos"].append((self.t, k // gw, k % gw))
          vis["latent"].append(x[r, k])
          vis_t.append(t)
    if not vis["kind"]:  # an empty vision stream: one padding slot (segment 0, invisible)
      vis = {"kind": [0], "image": [0], "pos": [(0, 0, 0)], "latent": [np.zeros(self.dims[1])]}
      vis_t = [1.0]
    b = {}
    for name, s in (("txt", txt), ("vis", vis)):
      b[f"{name}_kind"] = torch.tensor([s["kind"]], dtype=torch.int32)
      b[f"{name}_segment"] = (b[f"{name}_kind"] > 0).int()
      b[f"{name}_image"] = torch.tensor([s["image"]], dtype=torch.int32)
      b[f"{name}_pos"] = torch.tensor([s["pos"]], dtype=torch.int32)
    b["txt_token"] = torch.tensor([txt["token"]], dtype=torch.int32)
    b["txt_patch"] = torch.from_numpy(np.stack(txt["patch"])[None])
    b["vis_latent"] = torch.from_numpy(np.stack([np.asarray(v, np.float32)
                                                 for v in vis["latent"]])[None])
    return b, torch.tensor([vis_t], dtype=torch.float32)


class Generator:
  """Greedy text and guided flow images from an export directory (see the module doc)."""

  def __init__(self, path: str):
    with open(os.path.join(path, "generation.json")) as f:
      self.g = json.load(f)
    self.model = torch_model.Mogao.from_dir(path)
    self.codec = Codec(path, self.g)
    self.tokenizer = None
    if os.path.exists(os.path.join(path, "tokenizer.json")):
      import tokenizers  # pylint: disable=g-import-not-at-top
      self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids))

  def next_logits(self, doc: Document) -> torch.Tensor:
    b, vis_t = doc.batch()
    logits = self.model(b, vis_t)[0][0]
    last = int(np.nonzero(b["txt_kind"][0].numpy() == TXT)[0][-1])
    return logits[last].clone()

  def velocity(self, doc: Document, x_nD: torch.Tensor, t: float, guided: bool, g_img, g_txt):
    """The guided velocity of the next image's NVAE slots at latent x, time t."""
    reps = 3 if guided else 1
    b, vis_t = doc.batch((x_nD[None].expand(reps, -1, -1).numpy(), t, self.g["latent_grid"]))
    keep = None
    if guided:
      kinds = torch.cat([b["txt_kind"], b["vis_kind"]], 1)[0]
      images = torch.cat([b["txt_image"], b["vis_image"]], 1)[0]
      is_nvae = kinds == NVAE
      branch = torch.where(is_nvae, images // BRANCH_OFFSET, torch.full_like(images, 2))
      is_img = (kinds == VIT) | (kinds == CVAE)
      # Branch 2 reads every condition, branch 1 only context images, branch 0 none; every
      # query keeps the NVAE keys (the mask separates the copies by image id).
      keep = ((branch[:, None] == 2) | ((branch[:, None] == 1) & is_img[None, :])
              | is_nvae[None, :])[None]
    v = self.model(b, vis_t, keep)[1][0]
    v = v[b["vis_kind"][0] == NVAE].reshape(reps, *x_nD.shape)
    return guide(v[0], v[1], v[2], g_img, g_txt) if guided else v[0]

  def image(self, doc: Document, noise=None, steps=50, shift=3.0, g_img=1.0, g_txt=1.0,
            seed=0) -> np.ndarray:
    """Integrates the next image from noise (given [n, D], else drawn from ``seed``),
    appends it clean and `</img>`; returns its uint8 pixels."""
    gh, gw = self.g["latent_grid"]
    if noise is None:
      noise = torch.randn(gh * gw, self.g["latent_dim"],
                          generator=torch.Generator().manual_seed(seed))
    x = torch.tensor(np.array(noise, np.float32))
    ts = time_grid(steps, shift)
    guided = not (g_img == 1.0 and g_txt == 1.0)
    for i in range(steps):
      v = self.velocity(doc, x, float(ts[i]), guided, g_img, g_txt)
      x = x + (ts[i + 1] - ts[i]) * v
    pixels = self.codec.decode(x.numpy())
    p = self.g["patch_size"]
    doc.image(patchify(pixels, p), (pixels.shape[0] // p, pixels.shape[1] // p),
              self.codec.encode(pixels), self.g["latent_grid"])
    doc.tokens([self.g["img_close_id"]])
    return pixels

  def generate(self, prompt, image: bool = False, max_tokens: int = 32, noise=(),
               steps: int = 50, shift: float = 3.0, g_img: float = 1.0, g_txt: float = 1.0,
               seed: int = 0) -> list[tuple[str, object]]:
    """BOS + ``prompt`` (text, or token ids), `<img>` + an image first if ``image``, then greedy
    decoding of up to ``max_tokens`` tokens, with an image wherever the model writes `<img>`.
    ``noise``: the images' initial noise in order (the rest drawn from ``seed``)."""
    g, noise = self.g, list(noise)
    doc = Document(*self.model_dims())
    ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
    doc.tokens([g["bos_id"], *ids])
    out, text, budget = [], [], max_tokens
    kw = dict(steps=steps, shift=shift, g_img=g_img, g_txt=g_txt)

    def new_image():
      doc.tokens([g["img_open_id"]])
      n = len([o for o in out if o[0] == "image"])
      out.append(("image", self.image(doc, noise[n] if n < len(noise) else None,
                                      seed=seed + n, **kw)))

    if image:
      new_image()
    while budget > 0:
      logits = self.next_logits(doc)
      logits[self.g["blocked_ids"]] = -torch.inf  # as the JAX sampler: never an undecodable id
      tok = int(torch.argmax(logits))
      budget -= 1
      if tok == g["eos_id"]:
        break
      if tok == g["img_open_id"]:
        self._flush(out, text)
        new_image()
        continue
      text.append(tok)
      doc.tokens([tok])
    self._flush(out, text)
    return out

  def model_dims(self):
    return self.model.cfg["patch_dim"], self.model.cfg["latent_dim"]

  def _flush(self, out, text):
    special = {self.g[k] for k in ("bos_id", "eos_id", "img_close_id", "pad_id")}
    ids = [i for i in text if i not in special]
    if ids:
      out.append(("text", self.decode(ids) if self.tokenizer else ids))
    text.clear()
