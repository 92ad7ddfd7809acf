"""HTML pages and PNG files for sampled documents and eval reports (no external assets)."""

from __future__ import annotations

import html
import os

import numpy as np
from PIL import Image as PILImage

from mogao_jax.data import documents

_STYLE = """<style>
body{font-family:sans-serif;margin:1.5em} td,th{border:1px solid #ccc;padding:4px;
vertical-align:top} table{border-collapse:collapse} .prompt{color:#666} .gen{font-weight:bold}
img{image-rendering:pixelated;width:96px;height:96px;margin:2px;border:1px solid #999}
.ok{background:#dfd} .bad{background:#fdd}
</style>"""


def save_png(path: str, pixels: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  PILImage.fromarray(np.asarray(pixels, np.uint8)).save(path)
  return path


def load_png(path: str, size: int) -> np.ndarray:
  """An RGB uint8 [size, size, 3] image; other sizes are resized (bilinear)."""
  im = PILImage.open(path).convert("RGB")
  if im.size != (size, size):
    im = im.resize((size, size), PILImage.BILINEAR)
  return np.asarray(im, np.uint8)


class Writer:
  """Writes images under `out/img/` and returns HTML snippets referring to them."""

  def __init__(self, out: str):
    self.out, self.n = out, 0
    os.makedirs(os.path.join(out, "img"), exist_ok=True)

  def image(self, pixels: np.ndarray, name: str = "") -> str:
    self.n += 1
    rel = os.path.join("img", f"{self.n:05d}{'_' + name if name else ''}.png")
    save_png(os.path.join(self.out, rel), pixels)
    return f'<img src="{rel}" title="{html.escape(name)}">'

  def document(self, parts, name: str = "") -> str:
    """[(role, Text | Image)] -> inline HTML, fed parts grey, sampled parts bold."""
    out = []
    for role, p in parts:
      if isinstance(p, documents.Image):
        out.append(self.image(p.pixels, f"{name}{'gen' if role == 'gen' else 'in'}"))
      else:
        out.append(f'<span class="{role}">{html.escape(p.text)}</span>')
    return " ".join(out)

  def page(self, title: str, body: str, filename: str = "index.html") -> str:
    path = os.path.join(self.out, filename)
    with open(path, "w") as f:
      f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
              f"</title>{_STYLE}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return path


def table(header, rows, classes=None) -> str:
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
  body = []
  for i, r in enumerate(rows):
    cls = f' class="{classes[i]}"' if classes and classes[i] else ""
    body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
  return f"<table><tr>{head}</tr>{''.join(body)}</table>"
