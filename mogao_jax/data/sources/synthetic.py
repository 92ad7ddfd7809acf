"""A synthetic web-like corpus on disk (JSONL + image files), for tests, the dataset doctor's
demo and benchmarks/pipeline.py.

`write_web_corpus(folder, n_docs, seed)` writes `folder/docs.jsonl` and `folder/img/*.{png,jpg}`
with a long-tailed document length (log-normal word count, median ~40 words, a tail past a
thousand), 0-4 images per document (P = .30 .35 .20 .10 .05) at varied aspect ratios (1:1, 4:3,
3:4, 16:9, 9:16, 2:1, 1:2) and sizes (short side 24-320 px), PNG or JPEG, about a quarter of them
generation targets; words come from the world's vocabulary, so the world tokenizer covers them.
`bad=True` adds one of each kind of bad input (see BAD) after the good documents, each tagged
in meta["bad"] with the issue it must produce.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mogao_jax.data import records
from mogao_jax.data.sources import world

ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (2, 1), (1, 2))
N_IMAGES_P = (0.30, 0.35, 0.20, 0.10, 0.05)

# Bad inputs appended with bad=True: JSONL line -> the issue reason records.to_document reports.
BAD = {
    "invalid_json": "record/undecodable",
    "missing_file": "image/missing_file",
    "truncated_png": "image/truncated",
    "zero_byte_file": "image/empty",
    "no_parts": "doc/empty",
    "wrong_type_text": "json/wrong_type:text",
}


def _words(n_scenes: int = 50) -> list[str]:
  words = sorted({w.strip(".,?!;:") for line in world.world_text_corpus(n_scenes)
                  for w in line.split()} - {""})
  return words


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A smooth colour gradient plus a few rectangles: compresses like a photo-ish image."""
  y, x = np.mgrid[0:h, 0:w]
  c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  t = ((x / max(w - 1, 1) + y / max(h - 1, 1)) / 2)[..., None]
  px = (c0 * (1 - t) + c1 * t)
  for _ in range(rng.integers(1, 4)):
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    px[y0:y0 + rng.integers(4, max(5, h // 2)), x0:x0 + rng.integers(4, max(5, w // 2))] = \
        rng.integers(0, 256, 3)
  return px.astype(np.uint8)


def _encode(px: np.ndarray, fmt: str) -> bytes:
  return records.image_bytes(px, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def web_document(rng: np.random.Generator, words: list[str], i: int, img_dir: str,
                 rel_dir: str = "img") -> dict[str, Any]:
  """One web-like record; writes its image files into img_dir."""
  n_img = int(rng.choice(len(N_IMAGES_P), p=N_IMAGES_P))
  n_words = int(np.clip(rng.lognormal(np.log(40), 1.0), 1, 4000))
  cuts = sorted(rng.integers(0, n_words + 1, n_img)) if n_img else []
  bounds = [0, *cuts, n_words]
  parts = []
  for k in range(n_img + 1):
    seg = bounds[k + 1] - bounds[k]
    if seg:
      parts.append({"type": "text", "text": " ".join(rng.choice(words, seg))})
    if k < n_img:
      ah, aw = ASPECTS[rng.integers(len(ASPECTS))]
      short = int(rng.integers(24, 321))
      h, w = (short * ah // min(ah, aw), short * aw // min(ah, aw))
      fmt = "PNG" if rng.random() < 0.4 else "JPEG"
      name = f"{i:06d}_{k}.{'png' if fmt == 'PNG' else 'jpg'}"
      with open(os.path.join(img_dir, name), "wb") as f:
        f.write(_encode(_image(rng, h, w), fmt))
      parts.append({"type": "image", "path": f"{rel_dir}/{name}",
                    "generate": bool(rng.random() < 0.25)})
  if not parts:
    parts = [{"type": "text", "text": " ".join(rng.choice(words, 3))}]
  return {"id": f"web-{i:06d}", "parts": parts, "meta": {"n_words": n_words}}


def bad_lines(img_dir: str, rel_dir: str = "img") -> list[str]:
  """One JSONL line per entry of BAD (writes the broken image files they reference)."""
  png = _encode(np.full((32, 32, 3), 200, np.uint8), "PNG")
  with open(os.path.join(img_dir, "truncated.png"), "wb") as f:
    f.write(png[:len(png) // 2])
  open(os.path.join(img_dir, "empty.png"), "wb").close()
  text = {"type": "text", "text": "a red circle"}
  def rec(name, parts):
    return json.dumps({"id": f"bad-{name}", "parts": parts, "meta": {"bad": BAD[name]}})
  return [
      '{"id": "bad-invalid_json", "parts": [',
      rec("missing_file", [text, {"type": "image", "path": f"{rel_dir}/nope.png"}]),
      rec("truncated_png", [text, {"type": "image", "path": f"{rel_dir}/truncated.png"}]),
      rec("zero_byte_file", [text, {"type": "image", "path": f"{rel_dir}/empty.png"}]),
      rec("no_parts", []),
      rec("wrong_type_text", [{"type": "text", "text": 5}, text]),
  ]


def write_web_corpus(folder: str, n_docs: int, seed: int = 0, bad: bool = False,
                     name: str = "docs.jsonl") -> str:
  """Writes the corpus (see module docstring); returns the JSONL path."""
  img_dir = os.path.join(folder, "img")
  os.makedirs(img_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  words = _words()
  lines = [json.dumps(web_document(rng, words, i, img_dir)) for i in range(n_docs)]
  if bad:
    lines += bad_lines(img_dir)
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
