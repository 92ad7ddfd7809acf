"""Documents -> ECTF token streams (see batch.py, MOGAO.md 5): the first half of packing.

`encode_document` turns one Document into per-stream arrays (the batch.py fields, without the
row-level segment and with image ids local to the document), emitting only the image copies
something reads, and truncates an over-long document at a text boundary. `packing.py` fits
the encoded documents into rows.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from mogao_jax.data import documents
from mogao_jax.data import images
from mogao_jax.data import latents
from mogao_jax.data.tokenizer import LITERAL_ISSUE
from mogao_jax.data.batch import Kind


def role_weights(data_config) -> dict[str, float] | None:
  """config.data.text_loss_weights as {role: weight} over every documents.TEXT_ROLES (1.0 where
  unnamed); None when the key is absent or empty (every text loss weight stays 1). Raises
  ValueError naming the key on an unknown role or a weight that is not a number >= 0."""
  given = dict(data_config.get("text_loss_weights", None) or {})
  if not given:
    return None
  for role, w in given.items():
    if role not in documents.TEXT_ROLES:
      raise ValueError(f"config.data.text_loss_weights.{role}: unknown text role; the roles "
                       f"are {documents.TEXT_ROLES} (data/documents.py)")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
      raise ValueError(f"config.data.text_loss_weights.{role} = {w!r}: must be a number >= 0")
  return {r: float(given.get(r, 1.0)) for r in documents.TEXT_ROLES}


def _copies(generate, is_image) -> list[tuple[bool, bool, bool]]:
  """(vit, cvae, nvae) per image, given per part whether it is an image and a generation
  target: emit only the copies something reads (MOGAO.md 5)."""
  flags, later_gen = [], False
  for j in range(len(is_image) - 1, -1, -1):  # walk backwards to know what comes later
    if is_image[j]:
      flags.append((j < len(is_image) - 1, later_gen, bool(generate[j])))
      later_gen = later_gen or bool(generate[j])
  return flags[::-1]


class _Chunk(NamedTuple):
  """n slots of one kind; t/h/w/token scalars or [n] arrays, data [n, dim] or None (zeros)."""
  n: int
  kind: int
  image: int
  t: Any
  h: Any = 0
  w: Any = 0
  token: Any = 0
  data: np.ndarray | None = None
  loss_w: float = 0.0


def _concat(chunks, dim, prefix) -> dict[str, np.ndarray]:
  """The chunks as the batch.py fields of one stream (no segment): each field allocated once
  and filled a chunk slice at a time (no per-chunk arrays to concatenate). `dim`: the data
  width when no chunk carries data (stored latents are wider or narrower than pixel patches)."""
  n = sum(c.n for c in chunks)
  dim = next((c.data.shape[1] for c in chunks if c.data is not None), dim)
  kind, image = np.empty(n, np.int32), np.empty(n, np.int32)
  pos, loss_w = np.empty((n, 3), np.int32), np.empty(n, np.float32)
  data, token = np.zeros((n, dim), np.float32), np.empty(n, np.int32)
  at = 0
  for c in chunks:
    sl = slice(at, at + c.n)
    kind[sl], image[sl], loss_w[sl], token[sl] = c.kind, c.image, c.loss_w, c.token
    pos[sl, 0], pos[sl, 1], pos[sl, 2] = c.t, c.h, c.w
    if c.data is not None:
      data[sl] = c.data
    at += c.n
  out = {"kind": kind, "image": image, "pos": pos, "loss_w": loss_w,
         "patch" if prefix == "txt" else "latent": data}
  if prefix == "txt":
    out["token"] = token
    out["target"] = np.zeros_like(token)
  return {f"{prefix}_{k}": v for k, v in out.items()}


def encode_document(doc: documents.Document, tokenizer, patch_size: int,
                    max_len: tuple[int, int] | None = None, latent_patch: int = 0,
                    latent_dim: int = 0, encode_grid: tuple[int, int] | None = None,
                    text_loss_weights: Mapping[str, float] | None = None) -> dict[str, Any]:
  """One document as ECTF stream arrays; T restarts at 0, image ids count 1, 2, ... .

  Returns the batch.py txt_*/vis_* fields except txt_segment/vis_segment, each with its own
  length (n_txt, n_vis), plus `"doc"`: {"id", "source", "issues"} from the document's meta
  (records.py) and "text_tokens" ({role: text positions with a loss, before weighting}),
  which the packer counts. A document without any text token or image comes back
  with both lengths 0 (the packer drops and counts it). Images may be any H x W divisible by
  the patch size; H, W positions are the patch row and column.

  `max_len` = (l_txt, l_vis[, vit_images[, vis_images]]): a document that does not fit an empty
  row (its slots, with a third entry the images with VIT copies a row holds: batch.vit_capacity,
  with a fourth those with vision copies: batch.vis_capacity) is
  truncated at a text boundary (between tokens or parts, never through an image; no EOS, since the text did not end
  there) and gets the issue "doc/truncated". It is left whole (and the packer drops it as
  oversize) when even the prefix through its first image does not fit, or when what fits has
  nothing to learn.

  `latent_patch` > 0 (config.data.latents = "precomputed"): the CVAE / NVAE slots hold each
  image's stored VAE latent patchified `latent_patch` x `latent_patch` (latents.patchify; rows
  `latent_dim` wide, H, W = the latent patch grid) instead of its pixel patches; an image
  without a latent is dropped with the issue "image/no_latent".

  `encode_grid` = (gh, gw) (config.data.latents = "encode", with latent_patch and latent_dim):
  the CVAE / NVAE slots are zero on that latent patch grid, and `"vis_pixels"` [k, H, W, 3]
  uint8 holds the k images with vision copies in image-id order, for the input step's VAE.

  `text_loss_weights` ({role: weight}, every role of documents.TEXT_ROLES: `role_weights`)
  multiplies each text position's loss weight by the role of the token it predicts (see
  `_target_roles`); None leaves every weight 1 (the arrays are then those of before roles).
  """
  m = doc.meta
  info = {"id": str(m.get(documents.ID, "") or ""),
          "source": str(m.get(documents.SOURCE, "") or ""),
          "issues": [tuple(i) for i in m.get(documents.ISSUES, ())]}
  parts = doc.parts
  if latent_patch and encode_grid is None:
    parts = [p for p in parts if not isinstance(p, documents.Image) or p.latent is not None]
    info["issues"] += [("image/no_latent", info["id"] or "<document>")] * (len(doc.parts) -
                                                                          len(parts))
  literals = [t for p in parts if isinstance(p, documents.Text)
              for t in tokenizer.special_literals(p.text)]
  if literals:  # encoded as plain text (data/tokenizer.py); counted, the document is kept
    info["issues"].append((LITERAL_ISSUE, f"{info['id'] or '<document>'}: {literals[0]!r}"))
  items = [("t", tokenizer.encode(p.text), p.role) if isinstance(p, documents.Text)
           else ("i", _patched(p, patch_size, latent_patch, latent_dim, encode_grid))
           for p in parts]
  out = _encode_items(items, tokenizer, patch_size, eos=True, weights=text_loss_weights)
  if max_len is not None and not _fits(out, max_len):
    n_vit, n_vim = vit_images(out), vision_images(out)
    cut = _truncate(items, tokenizer, patch_size, max_len, text_loss_weights)
    if cut is not None:
      out = cut
      where = info["id"] or "<document>"
      info["issues"].append(("doc/truncated", where))
      if len(max_len) > 2 and n_vit > max_len[2]:
        info["issues"].append(("doc/over_vit_images", f"{where}: {n_vit} images with VIT "
                               f"copies; a row's encoder holds {max_len[2]} (model.vit_images)"))
      if len(max_len) > 3 and n_vim > max_len[3]:
        info["issues"].append(("doc/over_vis_images", f"{where}: {n_vim} images with vision "
                               f"copies; a row holds {max_len[3]} (model.vis_images)"))
  if latent_patch:  # rows latent_dim wide even with no vision slot
    out["vis_latent"] = out["vis_latent"].reshape(-1, latent_dim)
  info["text_tokens"] = out.pop("text_tokens")
  out["doc"] = info
  return out


def _patched(image: documents.Image, patch_size: int, latent_patch: int = 0, latent_dim: int = 0,
             encode_grid=None):
  """(generate, patches, rows, cols, vision) of an image; vision = (latent patches, rows, cols,
  pixels or None) with a VAE codec, else None (the vision slots take the pixel patches)."""
  grid = images.grid_shape(image.pixels, patch_size)
  rows, cols = images.patch_rows_cols(grid)
  vision = None
  if encode_grid is not None:  # latents made in the input step from these pixels
    vision = (np.zeros((encode_grid[0] * encode_grid[1], latent_dim), np.float32),
              *images.patch_rows_cols(encode_grid), image.pixels)
  elif latent_patch:
    vis = latents.patchify(image.latent, latent_patch)
    if vis.shape[1] != latent_dim:
      raise ValueError(f"a stored latent of {image.latent.shape[-1]} channels gives "
                       f"{vis.shape[1]}-wide patches but config.model.latent_dim={latent_dim} "
                       f"(config.data.latent_channels x config.data.latent_patch={latent_patch}"
                       "**2 must match the VAE the latents were encoded with)")
    vision = (vis, *images.patch_rows_cols(latents.grid_shape(image.latent, latent_patch)), None)
  return image.generate, images.patchify(image.pixels, patch_size), rows, cols, vision


def _fits(enc, max_len) -> bool:
  nt, nv = doc_lengths(enc)
  return (nt <= max_len[0] and nv <= max_len[1]
          and (len(max_len) < 3 or vit_images(enc) <= max_len[2])
          and (len(max_len) < 4 or vision_images(enc) <= max_len[3]))


def _learnable(enc) -> bool:
  return bool(enc["txt_loss_w"].any() or (enc["vis_kind"] == Kind.NVAE).any())


def _truncate(items, tokenizer, patch_size, max_len, weights=None):
  """The longest prefix of `items` (whole parts, then tokens of the next text part) that fits,
  encoded without EOS; None when it must hold the first image and cannot, or teaches nothing."""
  def enc(prefix):
    return _encode_items(prefix, tokenizer, patch_size, eos=False, weights=weights)
  first_img = next((j for j, item in enumerate(items) if item[0] == "i"), None)
  lo = 0 if first_img is None else first_img + 1  # the shortest prefix allowed
  if not _fits(enc(items[:lo]), max_len):
    return None
  hi = len(items)  # all parts may fit once the EOS is gone
  while lo < hi:  # largest k in [lo, hi] whose prefix fits (lengths grow with k)
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if _fits(enc(items[:mid]), max_len) else (lo, mid - 1)
  best = items[:lo]
  if lo < len(items) and items[lo][0] == "t":
    ids, role = list(items[lo][1]), items[lo][2]
    a, b = 0, len(ids)  # largest m with prefix + ids[:m] fitting (m = 0: the part left out)
    while a < b:
      mid = (a + b + 1) // 2
      a, b = (mid, b) if _fits(enc(best + [("t", ids[:mid], role)]), max_len) else (a, mid - 1)
    if a:
      best = best + [("t", ids[:a], role)]
  # A prefix ending in an image that is not generated gives that image no copy at all (a VIT
  # copy needs something after it): only its <img></img> shell would remain. Cut it off; if it
  # is the first image, nothing can be kept.
  if best and best[-1][0] == "i" and not best[-1][1][0]:
    if len(best) == first_img + 1:
      return None
    best = best[:-1]
  out = enc(best)
  return out if _learnable(out) else None


def _encode_items(items, tokenizer, patch_size: int, eos: bool,
                  weights=None) -> dict[str, np.ndarray]:
  """Tokenised parts ("t", ids, role) / ("i", _patched(...)) -> stream arrays (see
  encode_document), plus "text_tokens" (the loss positions per role)."""
  pdim = patch_size * patch_size * 3
  copies = iter(_copies([item[0] == "i" and item[1][0] for item in items],
                        [item[0] == "i" for item in items]))
  txt, vis, t, img_id = [], [], 0, 0
  roles = []  # per TXT token: its text part's role, None for BOS / <img> / </img> / EOS
  vis_pixels = []  # ("encode") images with vision copies, in id order
  run: list[int] = []  # text tokens since the last image: one chunk (their T are consecutive)

  def flush():
    if run:
      n = len(run)
      txt.append(_Chunk(n, Kind.TXT, 0, np.arange(t - n, t), token=run.copy()))
      run.clear()

  def tokens(ids, role=None):
    nonlocal t
    run.extend(int(i) for i in ids)
    roles.extend([role] * len(ids))
    t += len(ids)

  tokens([tokenizer.bos_id])
  for kind, data, *role in items:
    if kind == "t":
      tokens(data, role[0])
      continue
    vit, cvae, nvae = next(copies)
    img_id += 1
    _, patches, h, w, vision = data
    vpatches, vh, vw, pixels = vision if vision is not None else (patches, h, w, None)
    n = len(patches)
    if pixels is not None and (cvae or nvae):
      vis_pixels.append(pixels)
    tokens([tokenizer.img_open_id])
    flush()
    if vit:
      txt.append(_Chunk(n, Kind.VIT, img_id, t, h, w, data=patches))
    if cvae:
      vis.append(_Chunk(len(vpatches), Kind.CVAE, img_id, t, vh, vw, data=vpatches))
    if nvae:
      vis.append(_Chunk(len(vpatches), Kind.NVAE, img_id, t, vh, vw, data=vpatches, loss_w=1.0))
    t += 1  # the whole image is one T step
    tokens([tokenizer.img_close_id])
  if eos:
    tokens([tokenizer.eos_id])
  flush()
  if t == (2 if eos else 1):  # BOS (and EOS) only: nothing to learn
    txt, roles = [], []
  out = _concat(txt, pdim, "txt") | _concat(vis, pdim, "vis")
  _set_targets(out, tokenizer.img_close_id, _target_roles(roles), weights)
  if vis_pixels:
    out["vis_pixels"] = np.stack(vis_pixels)
  return out


def _target_roles(roles: list[str | None]) -> list[str]:
  """The role of every TXT token. A structural token (BOS, <img>, </img>, EOS: None) takes the
  role of the text part before it (a prompt ends by opening its image, an answer with EOS), or
  of the first one after it when none comes before (a caption's BOS -> <img>); "plain" in a
  document without text. So a document whose text has one role learns nothing from its text
  when that role weighs 0."""
  last = next((r for r in roles if r is not None), "plain")
  out = []
  for r in roles:
    last = last if r is None else r
    out.append(last)
  return out


def _set_targets(out, img_close_id, roles: list[str], weights=None):
  """Target = next TXT token of the document; no loss on the last one or on a `</img>` target.
  A position's loss weight is then `weights` of the role of its TARGET (the token it learns to
  predict: the last question token predicts the answer's first), when `weights` is given."""
  (idx,) = np.nonzero(out["txt_kind"] == Kind.TXT)
  target = np.zeros_like(out["txt_token"])
  target[idx[:-1]] = out["txt_token"][idx[1:]]
  loss_w = np.zeros(len(target), np.float32)
  loss_w[idx[:-1]] = (target[idx[:-1]] != img_close_id).astype(np.float32)
  target_roles = roles[1:]  # position idx[k] predicts TXT token k + 1
  out["text_tokens"] = dict(collections.Counter(
      r for r, w in zip(target_roles, loss_w[idx[:-1]]) if w > 0))
  if weights is not None and len(target_roles):
    loss_w[idx[:-1]] *= np.array([weights[r] for r in target_roles], np.float32)
  out["txt_target"], out["txt_loss_w"] = target, loss_w


def doc_lengths(enc: dict[str, np.ndarray]) -> tuple[int, int]:
  return len(enc["txt_kind"]), len(enc["vis_kind"])


def vit_images(enc: dict[str, np.ndarray]) -> int:
  """Images with VIT copies in an encoded document (the understanding encoder's images)."""
  return _distinct(enc["txt_image"][enc["txt_kind"] == Kind.VIT])


def vision_images(enc: dict[str, np.ndarray]) -> int:
  """Images with CVAE or NVAE copies in an encoded document (the per-image modulation's)."""
  return _distinct(enc["vis_image"][enc["vis_kind"] != Kind.PAD])


def _distinct(ids: np.ndarray) -> int:
  """How many distinct image ids (>= 0): a bincount, several times cheaper than np.unique
  on these short arrays (the packer asks per document)."""
  return int(np.count_nonzero(np.bincount(ids))) if len(ids) else 0
