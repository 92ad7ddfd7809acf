"""The interleaved document schema: an ordered list of text and image parts.

Every source (the built-in world, JSONL + image files, TFDS) produces `Document`s; the encoder
and packer (`encoding.py`, `packing.py`) are the only consumers, so a new source only has to
emit this schema.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np


# What a text span is for; config.data.text_loss_weights weighs its next-token loss by it
# (data/encoding.py). "plain" (the default) is external data and anything unlabelled; the
# world's document kinds set the others (data/sources/world/kinds.py): "prompt" is the text
# before a generated t2i image, "instruction" an edit's, "story" a story's sentences.
TEXT_ROLES = ("plain", "prompt", "instruction", "question", "answer", "caption", "story")


@dataclasses.dataclass(frozen=True)
class Text:
  """A span of text; tokenised as one run of TXT tokens. `role`: one of TEXT_ROLES."""

  text: str
  role: str = "plain"

  def __post_init__(self):
    if self.role not in TEXT_ROLES:
      raise ValueError(f"Text.role must be one of {TEXT_ROLES}, got {self.role!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
  """An RGB image. `generate`: the image is a flow-matching target (it gets NVAE tokens).
  `latent`: its precomputed VAE latent (data/latents.py), used with data.latents="precomputed"."""

  pixels: np.ndarray  # uint8 [H, W, 3]
  generate: bool = False
  latent: np.ndarray | None = None  # float32 [h, w, C]

  def __post_init__(self):
    px = self.pixels
    if not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.ndim != 3 or px.shape[-1] != 3:
      got = (getattr(px, "dtype", type(px)), getattr(px, "shape", None))
      raise ValueError(f"Image.pixels must be a uint8 [H, W, 3] array, got {got}")
    z = self.latent
    if z is not None and (not isinstance(z, np.ndarray) or z.dtype != np.float32 or z.ndim != 3):
      got = (getattr(z, "dtype", type(z)), getattr(z, "shape", None))
      raise ValueError(f"Image.latent must be None or a float32 [h, w, C] array, got {got}")

  def __repr__(self):
    z = "" if self.latent is None else f", latent=<float32 {list(self.latent.shape)}>"
    return f"Image(pixels=<uint8 {list(self.pixels.shape)}>, generate={self.generate}{z})"


Part = Union[Text, Image]

# Reserved Document.meta keys, set by the sources and read by the packer's counters. Not
# "source": the world's edit documents already use that for the scene being edited.
ISSUES, SOURCE, ID = "issues", "data_source", "id"


@dataclasses.dataclass(frozen=True)
class Document:
  """An interleaved document. `kind` and `meta` are metadata only (e.g. kind "t2i", "caption",
  "vqa"; meta: a JSON-able dict such as the world's scene and prompt category, for scoring)."""

  parts: tuple[Part, ...]
  kind: str = ""
  meta: dict = dataclasses.field(default_factory=dict, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "parts", tuple(self.parts))
    for p in self.parts:
      if not isinstance(p, (Text, Image)):
        raise ValueError(f"Document parts must be Text or Image, got {type(p).__name__}")

  @property
  def images(self) -> tuple[Image, ...]:
    return tuple(p for p in self.parts if isinstance(p, Image))
