"""THE document schema for external sources, and its robust conversion to `documents.Document`.

A raw record is a dict (or its `dumps` bytes, or JSON text / bytes of it):

    {"id": str,                                  required (an int is accepted and made a str)
     "parts": [                                  required, non-empty, in reading order
        {"type": "text", "text": str,
                         "role": str},           optional, default "plain": what the text is
                                                 for (documents.TEXT_ROLES: prompt, answer,
                                                 ...), weighing its loss (data.text_loss_weights)
        {"type": "image", "path": str,           relative to the source's image root, or
                          "bytes": bytes,        the encoded file (PNG, JPEG, GIF, WebP, ...;
                                                 in JSON text: a base64 string)
                          "generate": bool},     optional, default false: a generation target
        ...],
     "kind": str,                                optional ("t2i", "caption", "interleaved", ..)
     "meta": {...}}                              optional JSON object, carried into Document.meta

Unknown keys are ignored. `to_document` never raises on bad data. Problems travel WITH the
document as `Document.meta["issues"]`: a list of `(reason, where)` pairs, `reason` a short stable
slug (below), `where` the record id + part index (`"<id>/parts/<i>"`) or a file path, sometimes
followed by a detail in parentheses; the packer counts them by reason and keeps the first `where`
of each as the example (packing.TwoStreamPacker stats). A wholly unusable record becomes a
Document with `parts=()` (the packer drops and counts it); a bad part is dropped and the rest kept.
`Document.meta` also gets `"id"` and `"data_source"` (the source's name, for per-source
counters); "id", "data_source" and "issues" are reserved meta keys (documents.py).

Reasons. Skips (the part, or with doc/ and record/ json/ the whole document, is dropped):
  record/undecodable            bytes / text that are neither msgpack nor JSON
  json/wrong_type:record        not a JSON object
  json/missing_field:<f>        f = id | parts (document skipped), type | text | path (part)
  json/wrong_type:<f>           f = id | parts (document), part | text | generate | path | bytes
  json/unknown_part_type        a part whose "type" is not "text" or "image"
  doc/empty                     no parts, or none left after dropping the bad ones
  doc/no_text                   only images and none of them a generation target: nothing to learn
  image/missing_file  image/unreadable_file  image/bad_path (escapes the image root)
  image/empty  image/unknown_format  image/truncated  image/corrupt  image/too_large
  image/too_small               (decode.py)
Repairs (counted, the data is kept):
  image/animated_first_frame  image/mode_converted:<MODE>  image/bad_exif
  image/bad_latent              a malformed precomputed "latent" field: the image is kept without
  text/invalid_utf8             undecodable bytes replaced by U+FFFD
  text/empty                    an empty text part (dropped: it carries nothing)
  json/wrong_type:meta  json/wrong_type:kind   (ignored)
  json/wrong_type:role  text/unknown_role       (a text part's role: the text is kept, "plain")
Added downstream: doc/truncated (encoding.encode_document with max_len: a document longer than a
row, cut at a text boundary; a repair), doc/over_vit_images (the same cut, for a document with
more images with VIT copies than a row's encoder holds, model.vit_images; a repair) and
doc/oversize (the packer: not even the prefix through
its first image fits a row; dropped, also counted as dropped_oversize).

Storage (`dumps` / `loads`): msgpack, not JSON + base64. msgpack is already installed (flax and
orbax-checkpoint depend on it), stores image bytes as raw binary (base64 would add 33% to every
ArrayRecord shard and an encode/decode pass per image per read), and is 3-10x faster to parse.
`loads` also accepts JSON (hand-written JSONL), told apart by the first non-blank byte ("{").
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
import re
from typing import Any

import msgpack
import numpy as np

from mogao_jax.data import decode
from mogao_jax.data import documents
from mogao_jax.data import images
from mogao_jax.data import latents

Issue = tuple[str, str]

ISSUES, SOURCE, ID = documents.ISSUES, documents.SOURCE, documents.ID  # reserved meta keys

REPAIR_REASONS = ("image/animated_first_frame", "image/mode_converted:", "image/bad_exif",
                  "image/bad_latent", "doc/truncated", "doc/over_vit_images",
                  "text/invalid_utf8", "text/empty", "json/wrong_type:meta",
                  "json/wrong_type:kind", "json/wrong_type:role", "text/unknown_role")


def is_repair(reason: str) -> bool:
  """True for reasons whose data was kept (repaired or harmlessly ignored), False for skips."""
  return any(reason == r or (r.endswith(":") and reason.startswith(r)) for r in REPAIR_REASONS)


def issues_of(doc: documents.Document) -> list[Issue]:
  """The `(reason, where)` issues a document carries (empty for the world's documents)."""
  return [tuple(i) for i in doc.meta.get(ISSUES, ())]


# --------------------------------------------------------------------------------- resolution

@dataclasses.dataclass(frozen=True)
class Resolution:
  """How `to_document` sizes images: buckets (see images.py) and decode limits.
  buckets=None keeps each image at its decoded size (tools that only validate)."""

  buckets: tuple[tuple[int, int], ...] | None
  max_pixels: int | None = decode.DEFAULT_MAX_PIXELS
  min_side: int = decode.DEFAULT_MIN_SIDE

  @classmethod
  def from_config(cls, data_config) -> "Resolution":
    """config.data: image_buckets (default the square image_size), image_max_pixels,
    image_min_side."""
    d = data_config
    max_pixels = d.get("image_max_pixels", decode.DEFAULT_MAX_PIXELS)
    return cls(images.buckets_from_config(d),
               None if max_pixels is None else int(max_pixels),  # None: Pillow's own limit
               int(d.get("image_min_side", decode.DEFAULT_MIN_SIDE)))

  @property
  def draft_side(self) -> int | None:
    return max(max(b) for b in self.buckets) if self.buckets else None


def as_resolution(resolution) -> Resolution:
  """A Resolution, an int (one square bucket), a list of (h, w) buckets, or None (no resize)."""
  if isinstance(resolution, Resolution):
    return resolution
  if resolution is None:
    return Resolution(None)
  if isinstance(resolution, (int, np.integer)):
    return Resolution(((int(resolution), int(resolution)),))
  return Resolution(tuple((int(h), int(w)) for h, w in resolution))


# ------------------------------------------------------------------------------ dumps / loads

def _pack_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"record holds a {type(x).__name__}, which msgpack cannot store")


def dumps(record: dict) -> bytes:
  """A record -> msgpack bytes (raw bytes stay binary). Raises TypeError on a value msgpack
  cannot store (a writer bug, not bad data)."""
  return msgpack.packb(record, use_bin_type=True, default=_pack_default)


def _parse(data) -> Any:
  """msgpack or JSON -> whatever it holds; ValueError when it is neither."""
  try:
    if isinstance(data, str):
      return json.loads(data, strict=False)
    data = bytes(data)
    if data.lstrip()[:1] in (b"{", b"["):
      return json.loads(data.decode("utf-8", "surrogateescape"), strict=False)
    return msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape",
                           strict_map_key=False)
  except Exception as e:  # noqa: BLE001  json/msgpack raise many exception types
    raise ValueError(f"not a msgpack or JSON record: {type(e).__name__}: {str(e)[:80]}") from e


def loads(data: bytes | bytearray | memoryview | str) -> dict:
  """msgpack bytes (from `dumps`) or JSON text / bytes -> the record. Invalid UTF-8 in strings
  survives as surrogate escapes (`to_document` repairs and counts it). Raises ValueError on
  anything that is not a msgpack map or JSON object."""
  out = _parse(data)
  if not isinstance(out, dict):
    raise ValueError(f"record is a {type(out).__name__}, not an object")
  return out


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", **save_kwargs) -> bytes:
  """uint8 [H, W, 3] -> encoded bytes, for sources that hold decoded arrays (TFDS, the world,
  the synthetic corpus). save_kwargs go to Pillow's save (e.g. quality for JPEG)."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  PILImage.fromarray(np.asarray(pixels, np.uint8)).save(buf, fmt, **save_kwargs)
  return buf.getvalue()


# -------------------------------------------------------------------------------- to_document

def _unusable(issues, source, rid=None, meta=None) -> documents.Document:
  m = dict(meta or {})
  m.update({ID: rid, SOURCE: source, ISSUES: issues})
  return documents.Document((), meta=m)


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte (surrogateescape)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _fix_text(s: str, where: str, issues: list) -> str:
  """Valid Unicode for the tokenizer, whatever the record held: a surrogate PAIR (two code
  points, as some JSON / msgpack writers leave them) becomes its character; an undecodable
  byte smuggled through surrogateescape (U+DC80-U+DCFF) is "text/invalid_utf8"; any other lone
  surrogate "text/invalid_unicode"; both become U+FFFD. (A Python str holds no other invalid
  code point: every value outside U+D800-U+DFFF encodes to UTF-8; NUL and noncharacters are
  valid UTF-8 and the tokenizer takes them.)"""
  try:
    s.encode("utf-8")
    return s
  except UnicodeEncodeError:
    pass
  s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")  # pairs
  if _ESCAPED_BYTE.search(s):
    issues.append(("text/invalid_utf8", where))
  if _SURROGATE.search(_ESCAPED_BYTE.sub("", s)):
    issues.append(("text/invalid_unicode", where))
  return _SURROGATE.sub("\ufffd", s)


def _text_part(part, where, issues):
  if "text" not in part:
    issues.append(("json/missing_field:text", where))
    return None
  text = part["text"]
  if isinstance(text, (bytes, bytearray)):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError:
      issues.append(("text/invalid_utf8", where))
      text = bytes(text).decode("utf-8", "replace")
  elif isinstance(text, str):
    text = _fix_text(text, where, issues)
  else:
    issues.append(("json/wrong_type:text", f"{where} ({type(text).__name__})"))
    return None
  if not text:
    issues.append(("text/empty", where))
    return None
  return documents.Text(text, role=_role(part.get("role", "plain"), where, issues))


def _role(role, where, issues) -> str:
  """A text part's role, "plain" (counted) when it is not one of documents.TEXT_ROLES."""
  if not isinstance(role, str):
    issues.append(("json/wrong_type:role", f"{where} ({type(role).__name__})"))
    return "plain"
  if role not in documents.TEXT_ROLES:
    issues.append(("text/unknown_role", f"{where} ({role[:40]!r}; known: "
                                        f"{', '.join(documents.TEXT_ROLES)})"))
    return "plain"
  return role


def _read_file(path: str, image_root: str | None, where: str, issues) -> bytes | None:
  if not isinstance(path, str) or not path:
    issues.append(("json/wrong_type:path", where))
    return None
  if image_root is None:
    full = path
  elif "://" in image_root:
    if path.startswith("/") or ".." in path.split("/"):
      issues.append(("image/bad_path", f"{where}: {path}"))
      return None
    full = image_root.rstrip("/") + "/" + path
  else:
    root = os.path.abspath(image_root)
    full = os.path.abspath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
      issues.append(("image/bad_path", f"{where}: {path}"))
      return None
  try:
    if "://" in full:
      from etils import epath  # pylint: disable=g-import-not-at-top  (remote roots only)
      return epath.Path(full).read_bytes()
    with open(full, "rb") as f:
      return f.read()
  except FileNotFoundError:
    issues.append(("image/missing_file", f"{where}: {full}"))
  except Exception as e:  # noqa: BLE001  permissions, a directory, remote-storage errors
    reason = "image/missing_file" if "not found" in str(e).lower() else "image/unreadable_file"
    issues.append((reason, f"{where}: {full} ({type(e).__name__})"))
  return None


def _image_part(part, where, image_root, res: Resolution, issues):
  generate = part.get("generate", False)
  if generate is None or (type(generate) is int and generate in (0, 1)):  # 0 / 1 are fine
    generate = bool(generate)
  if not isinstance(generate, (bool, np.bool_)):
    issues.append(("json/wrong_type:generate", f"{where} ({type(generate).__name__})"))
    return None
  if part.get("bytes") is not None:
    data = part["bytes"]
    if isinstance(data, str):  # JSON has no bytes: base64 text
      try:
        data = base64.b64decode(data, validate=True)
      except (binascii.Error, ValueError):
        issues.append(("json/wrong_type:bytes", f"{where} (not base64)"))
        return None
    elif not isinstance(data, (bytes, bytearray, memoryview)):
      issues.append(("json/wrong_type:bytes", f"{where} ({type(data).__name__})"))
      return None
    label = where
  elif "path" in part:
    data = _read_file(part["path"], image_root, where, issues)
    if data is None:
      return None
    label = f"{where}: {part['path']}"
  else:
    issues.append(("json/missing_field:path", where))
    return None
  px, probs = decode.decode_image(data, where=label, max_pixels=res.max_pixels,
                                  min_side=res.min_side, draft_side=res.draft_side)
  issues.extend(probs)
  if px is None:
    return None
  if res.buckets:
    try:
      px = images.to_bucket(px, res.buckets)
    except Exception as e:  # noqa: BLE001  (a resize of valid pixels should not fail; be safe)
      issues.append(("image/corrupt", f"{label} (resize: {type(e).__name__}: {e})"))
      return None
  latent = None
  if part.get("latent") is not None:  # precomputed VAE latent (data/latents.py, encode_latents)
    try:
      latent = latents.from_field(part["latent"])
    except ValueError as e:  # the pixels are still good: keep the image, without the latent
      issues.append(("image/bad_latent", f"{label} ({str(e)[:100]})"))
  return documents.Image(px, generate=bool(generate), latent=latent)


def to_document(record: Any, *, image_root: str | None, resolution,
                source: str = "", origin: str = "") -> documents.Document:
  """A raw record (dict, `dumps` bytes, or JSON) -> Document; never raises on bad data.

  `resolution`: a Resolution, an int (square), a list of (h, w) buckets, or None (no resize).
  `image_root`: the directory (or `scheme://` URL, read with etils.epath) that image paths are
  relative to; paths may not escape it. None: paths are used as given.
  `origin`: where the record came from (e.g. "shard-3.jsonl:17"), the `where` of issues found
  before the record's id is known.
  """
  res = as_resolution(resolution)
  issues: list[Issue] = []
  here = origin or "<record>"
  if isinstance(record, (bytes, bytearray, memoryview, str)):
    try:
      record = _parse(record)
    except ValueError as e:
      return _unusable([("record/undecodable", f"{here} ({str(e)[:120]})")], source)
  if not isinstance(record, dict):
    return _unusable([("json/wrong_type:record", f"{here} ({type(record).__name__})")], source)

  rid = record.get("id")
  if rid is None:
    return _unusable([("json/missing_field:id", here)], source)
  if isinstance(rid, (int, np.integer)) and not isinstance(rid, bool):
    rid = str(rid)
  if not isinstance(rid, str):
    return _unusable([("json/wrong_type:id", f"{here} ({type(rid).__name__})")], source)
  rid = _fix_text(rid, here, issues)

  meta = record.get("meta")
  if meta is None:
    meta = {}
  elif not isinstance(meta, dict):
    issues.append(("json/wrong_type:meta", f"{rid} ({type(meta).__name__})"))
    meta = {}
  kind = record.get("kind", "")
  if kind is None:
    kind = ""
  elif not isinstance(kind, str):
    issues.append(("json/wrong_type:kind", f"{rid} ({type(kind).__name__})"))
    kind = ""

  if "parts" not in record:
    return _unusable(issues + [("json/missing_field:parts", rid)], source, rid, meta)
  raw_parts = record["parts"]
  if not isinstance(raw_parts, (list, tuple)):
    return _unusable(issues + [("json/wrong_type:parts", f"{rid} ({type(raw_parts).__name__})")],
                     source, rid, meta)

  parts = []
  for i, part in enumerate(raw_parts):
    where = f"{rid}/parts/{i}"
    if not isinstance(part, dict):
      issues.append(("json/wrong_type:part", f"{where} ({type(part).__name__})"))
      continue
    ptype = part.get("type")
    if ptype is None:
      issues.append(("json/missing_field:type", where))
      continue
    if ptype == "text":
      p = _text_part(part, where, issues)
    elif ptype == "image":
      p = _image_part(part, where, image_root, res, issues)
    else:
      issues.append(("json/unknown_part_type", f"{where} ({str(ptype)[:40]!r})"))
      continue
    if p is not None:
      parts.append(p)

  if not parts:
    return _unusable(issues + [("doc/empty", rid)], source, rid, meta)
  has_text = any(isinstance(p, documents.Text) for p in parts)
  if not has_text and not any(p.generate for p in parts if isinstance(p, documents.Image)):
    return _unusable(issues + [("doc/no_text", rid)], source, rid, meta)
  m = dict(meta)
  m.update({ID: rid, SOURCE: source, ISSUES: issues})
  return documents.Document(tuple(parts), kind=kind, meta=m)


def check_resolution_fits(res: Resolution, patch_size: int, vit_grid: int | None = None,
                          key: str = "config.data.image_buckets") -> None:
  """Raises ValueError if a bucket is not patch-divisible or (with `vit_grid`) has more patch
  rows / cols than the VIT position table (model.vit_grid), which would alias positions."""
  if not res.buckets:
    return
  images.check_buckets(res.buckets, patch_size, key)
  if vit_grid:
    for h, w in res.buckets:
      if h // patch_size > vit_grid or w // patch_size > vit_grid:
        raise ValueError(f"{key} has ({h}, {w}) = {h // patch_size}x{w // patch_size} patches; "
                         f"model.vit_grid={vit_grid} is the most per side")


def _text_record(p: documents.Text) -> dict:
  return {"type": "text", "text": p.text} | ({} if p.role == "plain" else {"role": p.role})


def from_document(doc: documents.Document, rid: str, fmt: str = "PNG") -> dict:
  """A Document -> a record (images encoded as `fmt` bytes); meta keeps its JSON-able entries
  except the reserved ones. For writing the world or test data in the schema."""
  parts = [_text_record(p) if isinstance(p, documents.Text) else
           {"type": "image", "bytes": image_bytes(p.pixels, fmt), "generate": bool(p.generate)}
           for p in doc.parts]
  meta = {k: v for k, v in doc.meta.items() if k not in (ID, SOURCE, ISSUES)}
  out = {"id": str(rid), "parts": parts, "meta": meta}
  if doc.kind:
    out["kind"] = doc.kind
  return out
