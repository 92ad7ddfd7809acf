"""Document -> Document transforms shared by every source (the world included).

`drop_condition` is condition dropout for classifier-free guidance (MOGAO.md 6): with
probability `p` a document's generation images lose their text condition, with probability
`p_image` (independently) their context images. It is a Grain random map (element, rng); `apply_cond_dropout` adds it to
a MapDataset of Documents from config.data.cond_dropout / cond_dropout_image (train split only;
unchanged dataset when both are 0, so the default stream is bit-identical):

    ds = transforms.apply_cond_dropout(ds, config, split)

What "dropping" means here mirrors the sampler's guidance branches (sample/engine.py
`condition_keep`: branch "img" sees the context images but no text, branch "none" sees
nothing): every Text part BEFORE the last generation image is removed (so each generation image
of the document is text-unconditioned, as in the "img" branch); with `p_image`, every
non-generation Image before the last generation image is removed. Text after the last
generation image is kept (it still trains the LM). A document without a generation image, or
one that would be left without any part, comes back unchanged. Dropped conditions are noted in
`meta["cond_dropped"]` (a tuple of "text" / "image"), not as issues: this is training
augmentation, not bad data.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mogao_jax.data import documents


def drop_condition(doc: documents.Document, rng: np.random.Generator, p: float,
                   p_image: float = 0.0) -> documents.Document:
  """Condition dropout (module docstring). Draws exactly two uniforms per document, so the
  stream of random numbers does not depend on the document's content."""
  u_txt, u_img = rng.random(2)
  drop_txt, drop_img = u_txt < p, u_img < p_image
  if not (drop_txt or drop_img):
    return doc
  gen = [j for j, q in enumerate(doc.parts) if isinstance(q, documents.Image) and q.generate]
  if not gen:
    return doc
  last = gen[-1]

  def dropped(j, q):
    if j >= last:
      return False
    if isinstance(q, documents.Text):
      return drop_txt
    return drop_img and not q.generate

  gone = [q for j, q in enumerate(doc.parts) if dropped(j, q)]
  parts = tuple(q for j, q in enumerate(doc.parts) if not dropped(j, q))
  if not gone or not parts:
    return doc
  what = tuple(w for w, t in (("text", documents.Text), ("image", documents.Image))
               if any(isinstance(q, t) for q in gone))
  return dataclasses.replace(doc, parts=parts, meta={**doc.meta, "cond_dropped": what})


def check_cond_dropout(p: float, key: str = "config.data.cond_dropout") -> float:
  """Validated probability; raises ValueError naming `key`."""
  p = float(p)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{key}={p} must lie in [0, 1]")
  return p


_SEED_OFFSET = 104_729  # keeps the dropout's random stream apart from the shuffles' seeds


def apply_cond_dropout(ds, config, split: str = "train", stream: int = 0):
  """`ds.random_map(drop_condition)` with config.data.cond_dropout (text) and
  config.data.cond_dropout_image (context images), both default 0; the train split only.
  `ds`: a grain MapDataset (or IterDataset) of Documents. Each element's coin flips depend on
  (config.seed, `stream` (the data shard), its index): deterministic, and checkpoint-safe
  like the rest of the graph; shards draw independent coins."""
  d = config.data
  p = check_cond_dropout(d.get("cond_dropout", 0.0))
  p_image = check_cond_dropout(d.get("cond_dropout_image", 0.0), "config.data.cond_dropout_image")
  if split != "train" or (p == 0.0 and p_image == 0.0):
    return ds
  return ds.random_map(functools.partial(drop_condition, p=p, p_image=p_image),
                       seed=(int(config.seed) + _SEED_OFFSET + 7_919 * stream) % 2**32)
