"""Encoded documents -> fixed-capacity two-stream rows (see batch.py, MOGAO.md 5).

`TwoStreamPacker` is a greedy 2-D first-fit over a few open rows of documents encoded by
`encoding.encode_document`; `PackIterDataset` wraps it as a checkpointable Grain transform.

Why not Grain's First/BestFitPackIterDataset: they are single-stream packers (one sequence per
feature), so they cannot keep a document's two streams together under one 2-D fit, and they were
measured ~50x slower than this numpy packer here.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import grain
import numpy as np

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.encoding import doc_lengths, vision_images, vit_images

_TXT_FIELDS = ("kind", "image", "pos", "token", "target", "loss_w", "patch")
_VIS_FIELDS = ("kind", "image", "pos", "latent", "loss_w")


@dataclasses.dataclass
class _OpenRow:
  docs: list = dataclasses.field(default_factory=list)
  seqs: list = dataclasses.field(default_factory=list)
  n_txt: int = 0
  n_vis: int = 0
  n_vit: int = 0  # images with VIT copies
  n_vim: int = 0  # images with vision (CVAE / NVAE) copies


class PackingError(ValueError):
  """The packer keeps dropping documents: no row can hold what the sources give."""


# Consecutive dropped documents (oversize or empty) after which the packer stops. An endless
# source (the world, a repeated mixture) whose documents cannot fit a row would otherwise spin
# forever without reaching a step boundary (where SIGTERM is handled). A healthy corpus drops a
# few documents in a row at most; 1,000 in a row means a capacity or a source is wrong.
MAX_DROP_RUN = 1000


class TwoStreamPacker:
  """Greedy 2-D first-fit over at most `open_rows` rows; emits the oldest row when none fits.

  Emitting the oldest (not the fullest) bounds how long a document can stay open, which bounds
  the replay a checkpoint restore needs (see PackDatasetIterator).
  """

  STAT_KEYS = ("docs_packed", "dropped_oversize", "dropped_empty", "rows", "txt_real", "vis_real")
  # Per-name counters (dicts), filled from each encoded document's "doc" info (records.py):
  # issues: reason -> documents with it (a document counts once per issue it carries);
  # issue_examples: reason -> the first `where` seen; source_docs / source_packed: source name
  # -> documents read / packed ("" = a document without a source, e.g. the world's);
  # text_tokens: text role -> the packed documents' text positions with a loss (before
  # config.data.text_loss_weights; encoding.encode_document).
  MAP_STAT_KEYS = ("issues", "issue_examples", "source_docs", "source_packed", "text_tokens")

  def __init__(self, l_txt: int, l_vis: int, patch_dim: int, latent_dim: int, open_rows: int = 4,
               max_drop_run: int = MAX_DROP_RUN, vit_images: int = 0, vis_images: int = 0,
               vis_pixels: tuple[int, int, int] | None = None):
    if open_rows < 1:
      raise ValueError(f"config.data.pack_open_rows must be >= 1, got {open_rows}")
    self.max_drop_run = max_drop_run
    self._drops = {"oversize": 0, "empty": 0}  # the current run of consecutive drops
    self._largest = (0, 0)  # the most (text, vision) slots a document of that run needed
    self.l_txt, self.l_vis, self.open_rows = l_txt, l_vis, open_rows
    # Images with VIT copies per row (batch.vit_capacity; 0 = no cap): the encoder's batch.
    self.vit_cap = vit_images or l_txt
    # Images with vision copies per row (batch.vis_capacity; 0 = no cap): the model computes
    # the timestep modulation once per image copy, for that many images.
    self.vis_cap = vis_images or l_vis
    # ("encode" latents) (K, S, S): each row's `vis_pixels`, its images with vision copies.
    self.vis_pixels = tuple(vis_pixels) if vis_pixels else None
    self.patch_dim, self.latent_dim = patch_dim, latent_dim
    self.rows: list[_OpenRow] = []
    self.stats = {k: 0 for k in self.STAT_KEYS} | {k: {} for k in self.MAP_STAT_KEYS}

  def _count(self, key: str, name: str) -> None:
    self.stats[key][name] = self.stats[key].get(name, 0) + 1

  def _issue(self, reason: str, where: str) -> None:
    self._count("issues", reason)
    self.stats["issue_examples"].setdefault(reason, where)

  def add(self, doc: dict[str, np.ndarray], seq: int = 0) -> dict[str, np.ndarray] | None:
    """Places one encoded document; returns the row this evicted, if any."""
    info = doc.get("doc") or {}
    source = info.get("source", "")
    self._count("source_docs", source)
    for reason, where in info.get("issues", ()):
      self._issue(reason, where)
    nt, nv = doc_lengths(doc)
    ni, nm = vit_images(doc), vision_images(doc)
    if nt == 0 and nv == 0:
      self.stats["dropped_empty"] += 1
      return self._dropped("empty", nt, nv)
    if (nt > self.l_txt or nv > self.l_vis or ni > self.vit_cap
        or nm > self.vis_cap):  # never cut through an image
      self.stats["dropped_oversize"] += 1
      self._issue("doc/oversize", f"{info.get('id') or '<document>'} ({nt} text + {nv} vision "
                                  f"slots, {ni} encoder / {nm} vision images; a row has "
                                  f"{self.l_txt} + {self.l_vis}, {self.vit_cap} / "
                                  f"{self.vis_cap} images)")
      return self._dropped("oversize", nt, nv)
    self._drops, self._largest = {"oversize": 0, "empty": 0}, (0, 0)
    self.stats["docs_packed"] += 1
    self._count("source_packed", source)
    for role, n in info.get("text_tokens", {}).items():
      self.stats["text_tokens"][role] = self.stats["text_tokens"].get(role, 0) + n
    for r, row in enumerate(self.rows):
      if (row.n_txt + nt <= self.l_txt and row.n_vis + nv <= self.l_vis
          and row.n_vit + ni <= self.vit_cap and row.n_vim + nm <= self.vis_cap):
        self.place(doc, seq, r, (nt, nv, ni, nm))
        return None
    out = self.pop_oldest() if len(self.rows) >= self.open_rows else None
    self.place(doc, seq, len(self.rows), (nt, nv, ni, nm))
    return out

  def _dropped(self, reason: str, nt: int, nv: int) -> None:
    """Counts a drop in the current run; raises PackingError once the run is too long."""
    self._drops[reason] += 1
    # Per stream: a tuple max would report the text-longest document's vision slots.
    self._largest = (max(self._largest[0], nt), max(self._largest[1], nv))
    n = sum(self._drops.values())
    if n < self.max_drop_run:
      return None
    issues = ", ".join(f"{k} {v}" for k, v in sorted(self.stats["issues"].items())) or "none"
    raise PackingError(
        f"the packer dropped {n} documents in a row and packed none of them ("
        f"{self._drops['oversize']} oversize, {self._drops['empty']} empty). Oversize: the"
        f" largest needed {self._largest[0]} text + {self._largest[1]} vision slots, but a row"
        f" has data.l_txt = {self.l_txt} + data.l_vis = {self.l_vis} (raise them, or"
        f" shorten the documents). Empty: documents with no usable part (issues so far:"
        f" {issues}; python -m mogao_jax.data.check shows them).")

  def place(self, doc, seq: int, r: int, sizes: tuple[int, int, int, int] | None = None) -> None:
    """Puts `doc` into open row r (r == len(rows) opens a new one); no fit checks. `sizes`:
    its (text, vision slots, VIT images, vision images) when the caller has counted them."""
    if r == len(self.rows):
      self.rows.append(_OpenRow())
    row = self.rows[r]
    nt, nv, ni, nm = sizes or (*doc_lengths(doc), vit_images(doc), vision_images(doc))
    row.docs.append(doc)
    row.seqs.append(seq)
    row.n_txt, row.n_vis = row.n_txt + nt, row.n_vis + nv
    row.n_vit += ni
    row.n_vim += nm

  def pop_oldest(self) -> dict[str, np.ndarray] | None:
    if not self.rows:
      return None
    row = self.rows.pop(0)
    self.stats["rows"] += 1
    self.stats["txt_real"] += row.n_txt
    self.stats["vis_real"] += row.n_vis
    return self._assemble(row.docs)

  def _assemble(self, docs) -> dict[str, np.ndarray]:
    """Copies the documents into one padded row: segments 1, 2, ..; image ids row-unique."""
    out = batch_lib.empty_row(self.l_txt, self.l_vis, self.patch_dim, self.latent_dim)
    offsets, img_base = {"txt": 0, "vis": 0}, 0
    for seg, doc in enumerate(docs, start=1):
      for prefix, fields in (("txt", _TXT_FIELDS), ("vis", _VIS_FIELDS)):
        n = len(doc[f"{prefix}_kind"])
        sl = slice(offsets[prefix], offsets[prefix] + n)
        for f in fields:
          out[f"{prefix}_{f}"][sl] = doc[f"{prefix}_{f}"]
        img = doc[f"{prefix}_image"]
        out[f"{prefix}_image"][sl] = np.where(img > 0, img + img_base, 0)
        out[f"{prefix}_segment"][sl] = seg
        offsets[prefix] += n
      img_base += max(int(doc["txt_image"].max(initial=0)), int(doc["vis_image"].max(initial=0)))
    if self.vis_pixels:
      out["vis_pixels"] = self._pixels(docs)
    return out

  def _pixels(self, docs) -> np.ndarray:
    """The row's vision images [K, S, S, 3] in image-id order (ids grow with segment order);
    K is never exceeded: each image takes at least l_vis / K vision slots."""
    k, h, w = self.vis_pixels
    out, at = np.zeros((k, h, w, 3), np.uint8), 0
    for doc in docs:
      px = doc.get("vis_pixels")
      if px is not None and len(px):
        out[at:at + len(px)] = px
        at += len(px)
    return out

  def efficiency(self) -> dict[str, float]:
    rows = max(self.stats["rows"], 1)
    return {"txt": self.stats["txt_real"] / (rows * self.l_txt),
            "vis": self.stats["vis_real"] / (rows * self.l_vis)}


class PackDatasetIterator(grain.DatasetIterator):
  """Checkpointable iterator of packed rows over an iterator of encoded documents.

  State = the parent's state just before the oldest document still in an open row, plus, for
  each open row, the positions (in read order from there) of its documents and how many
  documents were read in all. Restoring rewinds the parent and replays that short window,
  re-placing each document in its row (documents already emitted are skipped), so the open
  rows, and hence every following row, come out exactly as before. The state is plain JSON.
  """

  def __init__(self, parent: grain.DatasetIterator, packer_kwargs: dict[str, Any]):
    super().__init__(parent)
    self._packer_kwargs = packer_kwargs
    self._packer = TwoStreamPacker(**packer_kwargs)
    self._seq = 0  # documents read from the parent so far
    self._state_before: dict[int, Any] = {}  # seq -> parent state before it, for open docs
    self._exhausted = False

  @property
  def packer(self) -> TwoStreamPacker:
    return self._packer

  def _read(self):
    before = copy.deepcopy(self._parent.get_state())
    doc = next(self._parent)
    self._seq += 1
    return doc, self._seq - 1, before

  def __next__(self) -> dict[str, np.ndarray]:
    while not self._exhausted:
      try:
        doc, seq, before = self._read()
      except StopIteration:
        self._exhausted = True
        break
      row = self._packer.add(doc, seq)
      if any(seq in r.seqs for r in self._packer.rows):
        self._state_before[seq] = before
      if row is not None:
        self._forget_emitted()
        return row
    row = self._packer.pop_oldest()  # parent exhausted: flush the open rows, oldest first
    if row is None:
      raise StopIteration
    self._forget_emitted()
    return row

  def _forget_emitted(self):
    live = {s for r in self._packer.rows for s in r.seqs}
    self._state_before = {s: v for s, v in self._state_before.items() if s in live}

  def get_state(self) -> dict[str, Any]:
    if self._state_before:
      s0 = min(self._state_before)
      parent = self._state_before[s0]
      rows = [[s - s0 for s in r.seqs] for r in self._packer.rows]
    else:
      s0, parent, rows = self._seq, copy.deepcopy(self._parent.get_state()), []
    return {"parent": parent, "rows": rows, "n_read": self._seq - s0,
            "stats": copy.deepcopy(self._packer.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._packer = TwoStreamPacker(**self._packer_kwargs)
    self._seq, self._state_before, self._exhausted = 0, {}, False
    where = {s: r for r, seqs in enumerate(state["rows"]) for s in seqs}
    for _ in range(int(state["n_read"])):
      doc, seq, before = self._read()
      if seq in where:
        self._packer.place(doc, seq, where[seq])
        self._state_before[seq] = before
    saved = state["stats"]
    self._packer.stats = ({k: int(saved[k]) for k in TwoStreamPacker.STAT_KEYS}
                          | {k: dict(saved.get(k, {})) for k in TwoStreamPacker.MAP_STAT_KEYS})


class PackIterDataset(grain.IterDataset):
  """Grain transform: encoded documents (`encode_document`) -> rows per batch.row_spec."""

  def __init__(self, parent: grain.IterDataset, *, l_txt: int, l_vis: int, patch_dim: int,
               latent_dim: int, open_rows: int = 4, vit_images: int = 0, vis_images: int = 0,
               vis_pixels: tuple[int, int, int] | None = None):
    super().__init__(parent)
    self._packer_kwargs = dict(l_txt=l_txt, l_vis=l_vis, patch_dim=patch_dim,
                               latent_dim=latent_dim, open_rows=open_rows,
                               vit_images=vit_images, vis_images=vis_images,
                               vis_pixels=vis_pixels)
    TwoStreamPacker(**self._packer_kwargs)  # validate early

  def __iter__(self) -> PackDatasetIterator:
    return PackDatasetIterator(self._parent.__iter__(), self._packer_kwargs)

  def __str__(self) -> str:
    return f"PackIterDataset({self._packer_kwargs})"
