"""Prompt parts -> slots, on the host, by the rules of data/encoding.encode_document.

Each text token takes one T step; an image takes one T step shared by its VIT, CVAE and NVAE
copies, with H, W = patch row / column; image ids count 1, 2, ... per row. A context image gets
both clean copies (VIT for the text stream, CVAE for later generated images; the mask keeps
text from reading CVAE, so the extra copy changes no text logit). All slots of a sampled row
are one document: segment 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mogao_jax.data import images
from mogao_jax.data.batch import Kind

TXT_FIELDS = ("segment", "kind", "image", "pos", "token", "patch")
VIS_FIELDS = ("segment", "kind", "image", "pos", "latent")


@dataclasses.dataclass
class RowState:
  """Where the next slot of one row goes: T position, last image id, cache fill; and the
  row's clean (CVAE) image chunks so far, which the edit skip reads (model/edit_skip.py:
  the cache keeps keys and values, not latents)."""
  t: int = 0
  n_img: int = 0
  length: int = 0
  clean: list = dataclasses.field(default_factory=list)


def _chunk(n, kind, image, t, h=0, w=0, token=0, data=None, dim=0):
  pos = np.zeros((n, 3), np.int32)
  pos[:, 0], pos[:, 1], pos[:, 2] = t, h, w
  return dict(segment=np.ones(n, np.int32), kind=np.full(n, kind, np.int32),
              image=np.full(n, image, np.int32), pos=pos,
              token=np.broadcast_to(np.asarray(token, np.int32), (n,)),
              data=np.zeros((n, dim), np.float32) if data is None else data)


class Slots:
  """New slots of one row for one model call: text-stream and vision-stream chunks."""

  def __init__(self, state: RowState, patch_size: int):
    self.state, self.patch_size = state, patch_size
    self.txt: list[dict] = []
    self.vis: list[dict] = []

  def tokens(self, ids) -> "Slots":
    n, t = len(ids), self.state.t
    self.txt.append(_chunk(n, Kind.TXT, 0, np.arange(t, t + n), token=np.asarray(ids)))
    self.state.t += n
    return self

  def image(self, pixels: np.ndarray, latent=None) -> "Slots":
    """A clean image: VIT + CVAE copies at one T step (no delimiters: add them as tokens).
    `latent` = (patches [n, latent_dim], (gh, gw)): the codec's latent patches for the CVAE
    copy (model/codec.py); None = the pixel patches (the pixel codec)."""
    patches = images.patchify(pixels, self.patch_size)
    h, w = images.patch_rows_cols(images.validate(pixels, self.patch_size))
    vis, vh, vw = patches, h, w
    if latent is not None:
      vis, grid = latent
      vh, vw = images.patch_rows_cols(grid)
    self.state.n_img += 1
    img, t = self.state.n_img, self.state.t
    self.txt.append(_chunk(len(patches), Kind.VIT, img, t, h, w, data=patches))
    self.vis.append(_chunk(len(vis), Kind.CVAE, img, t, vh, vw, data=np.asarray(vis, np.float32)))
    self.state.clean.append(self.vis[-1])
    self.state.t += 1
    return self

  def noisy(self, grid, dim: int) -> "Slots":
    """The NVAE slots of the next image (id and T it will have once appended clean); `grid`:
    the latent patch grid, a side or (gh, gw)."""
    h, w = images.patch_rows_cols(grid)
    self.vis.append(_chunk(len(h), Kind.NVAE, self.state.n_img + 1, self.state.t, h, w,
                           dim=dim))
    return self

  def n_txt(self) -> int:
    return sum(len(c["kind"]) for c in self.txt)

  def n_vis(self) -> int:
    return sum(len(c["kind"]) for c in self.vis)


def bucket(n: int) -> int:
  """Static sizes for jit: 0, or the next power of two (few distinct compiles)."""
  return 0 if n == 0 else 1 << (n - 1).bit_length()


def _stream(chunks, n, dim, data_name):
  out = {"segment": np.zeros(n, np.int32), "kind": np.zeros(n, np.int32),
         "image": np.zeros(n, np.int32), "pos": np.zeros((n, 3), np.int32),
         "token": np.zeros(n, np.int32), data_name: np.zeros((n, dim), np.float32)}
  at = 0
  for c in chunks:
    m = len(c["kind"])
    for f in ("segment", "kind", "image", "pos", "token"):
      out[f][at:at + m] = c[f]
    if c["data"].shape[1]:
      out[data_name][at:at + m] = c["data"]
    at += m
  return out


def collate(rows: list[Slots | None], dims: tuple[int, int], capacity: int,
            n_txt: int | None = None, n_vis: int | None = None) -> dict[str, np.ndarray]:
  """Batch arrays for Sampler calls: txt_* [B, Nt], vis_* [B, Nv], plus

  dest [B, Nt + Nv]: cache index of each slot (capacity = not stored: padding),
  last [B]: text-stream index of the row's last TXT slot (its logits predict the next token),
  has_txt [B]: whether the row has a TXT slot.
  Advances each row's cache length by its real slot count.
  """
  nt = bucket(max([r.n_txt() for r in rows if r] + [0])) if n_txt is None else n_txt
  nv = bucket(max([r.n_vis() for r in rows if r] + [0])) if n_vis is None else n_vis
  txt, vis = [], []
  dest = np.full((len(rows), nt + nv), capacity, np.int32)
  last, has_txt = np.zeros(len(rows), np.int32), np.zeros(len(rows), bool)
  for i, r in enumerate(rows):
    txt.append(_stream(r.txt if r else [], nt, dims[0], "patch"))
    vis.append(_stream(r.vis if r else [], nv, dims[1], "latent"))
    if r is None:
      continue
    a, b = r.n_txt(), r.n_vis()
    if r.state.length + a + b > capacity:
      raise ValueError(f"sampled row needs {r.state.length + a + b} cache slots but the cache "
                       f"holds {capacity}: raise --max_len")
    dest[i, :a] = r.state.length + np.arange(a)
    dest[i, nt:nt + b] = r.state.length + a + np.arange(b)
    is_txt = txt[-1]["kind"] == Kind.TXT
    has_txt[i] = is_txt.any()
    last[i] = np.nonzero(is_txt)[0][-1] if has_txt[i] else 0
  out = {f"txt_{k}": np.stack([x[k] for x in txt]) for k in TXT_FIELDS}
  out |= {f"vis_{k}": np.stack([x[k] for x in vis]) for k in VIS_FIELDS}
  return out | {"dest": dest, "last": last, "has_txt": has_txt}


def with_clean_history(rows: list[Slots | None], dim: int) -> dict[str, np.ndarray]:
  """Vision-stream arrays (segment, kind, image, pos, latent) [B, n] of each row's new
  vision slots FIRST (so they keep their collate index), then the row's clean images so far
  (RowState.clean): what the edit skip's source rule reads (model/edit_skip.py)."""
  chunks = [(r.vis + r.state.clean) if r else [] for r in rows]
  n = bucket(max([sum(len(c["kind"]) for c in cs) for cs in chunks] + [1]))
  out = [_stream(cs, n, dim, "latent") for cs in chunks]
  return {k: np.stack([x[k] for x in out]) for k in VIS_FIELDS}


def advance(rows: list[Slots | None]) -> None:
  """Commits collated slots: each row's cache now holds them (NVAE queries are never stored)."""
  for r in rows:
    if r is not None:
      r.state.length += r.n_txt() + sum(len(c["kind"]) for c in r.vis
                                        if c["kind"][0] != Kind.NVAE)
