"""Source specs: one string syntax for `config.data.source(s)`, the CLI and the offline tools.

  world                                        the built-in procedural world (sources/world/)
  jsonl:PATH_OR_GLOB[?images=DIR]              JSONL documents (jsonl.py); image paths are
                                               relative to DIR (default: the first file's folder)
  arrayrecord:PATH_OR_GLOB[?images=DIR]        ArrayRecord files of records.dumps records
                                               (arrayrecord.py); DIR as above, for path parts
  tfds:NAME[?data_dir=DIR&split=S&images=DIR]  a prepared TFDS dataset with the interleaved_docs
                                               features (tfds_interleaved/), read with
                                               tfds.data_source; split default "train",
                                               data_dir default TFDS's (~/tensorflow_datasets)

Options every kind takes: `name=LABEL` (the per-source counters' key; default: "world", the
JSONL / ArrayRecord file stem, the TFDS name) and `weight=W` (mixing weight, default 1). Paths
may hold globs (`*`, `**`); `~` is expanded. Unknown kinds and options are errors naming them.

A mixture is several specs: `data.source = "jsonl:/a.jsonl?weight=3; arrayrecord:/b/*.ar"`
(separated by `;`, the form for `--config.data.source=...` on the command line), or, in a
config file, `data.sources` = a list whose items are spec strings or {spec, weight[, name]}
dicts (or a dict name -> spec string / {spec, weight}); `data.sources`, when non-empty, wins
over `data.source`. Names must be unique in a mixture (a repeated default gets "-2", "-3").

`open_source(spec)` gives the raw records of a file spec: len, `src[i]` (the parsed dict, or
None for unreadable input), `src.read(i)` = (raw record for records.to_document, its origin
"<file>:<line>"), `src.image_root`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Sequence
import urllib.parse
from mogao_jax.data.sources import jsonl
from mogao_jax.data.sources import arrayrecord
from mogao_jax.data.sources import tfds_interleaved

KINDS = ("world", "jsonl", "arrayrecord", "tfds")
_OPTIONS = {"world": ("name", "weight"),
            "jsonl": ("images", "name", "weight"),
            "arrayrecord": ("images", "name", "weight"),
            "tfds": ("data_dir", "split", "images", "name", "weight")}


@dataclasses.dataclass(frozen=True)
class Spec:
  """One parsed source spec. `target`: the path / glob (file kinds), the TFDS name, or ""."""

  kind: str
  target: str
  options: tuple[tuple[str, str], ...]
  text: str  # the spec as written
  name: str
  weight: float = 1.0

  def option(self, key: str, default: str | None = None) -> str | None:
    return dict(self.options).get(key, default)

  @property
  def image_root(self) -> str | None:
    """Where image paths of this source's records are relative to (None: as written)."""
    root = self.option("images")
    if root is not None:
      return os.path.expanduser(root)
    if self.kind in ("jsonl", "arrayrecord"):
      return os.path.dirname(os.path.abspath(jsonl.expand(self.target)[0]))
    return None

  def describe(self) -> str:
    return f"{self.name} = {self.text} (weight {self.weight:g})"


def _default_name(kind: str, target: str) -> str:
  if kind == "world":
    return "world"
  if kind == "tfds":
    return target.split(":")[0].split("/")[0]
  base = os.path.basename(target.rstrip("/")) or os.path.basename(os.path.dirname(target))
  base = re.sub(r"[*?\[\]]+", "", base).split(".")[0].strip("-_") or kind
  return base


def parse(text: str) -> Spec:
  """`KIND[:TARGET][?k=v&...]` -> Spec; ValueError naming what is wrong."""
  raw = text.strip()
  if not raw:
    raise ValueError("empty source spec")
  head, _, query = raw.partition("?")
  kind, _, target = head.partition(":")
  kind = kind.strip().lower()
  if kind not in KINDS:
    raise ValueError(f"source spec {text!r}: unknown kind {kind!r}; known: {', '.join(KINDS)} "
                     "(e.g. world, jsonl:/data/docs.jsonl?images=/data/img)")
  if kind == "world" and target:
    raise ValueError(f"source spec {text!r}: `world` takes no path")
  if kind != "world" and not target:
    raise ValueError(f"source spec {text!r}: {kind} needs a {'name' if kind == 'tfds' else 'path'}"
                     f" after '{kind}:'")
  pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False)
  keys = [k for k, _ in pairs]
  bad = sorted(set(keys) - set(_OPTIONS[kind]))
  if bad:
    raise ValueError(f"source spec {text!r}: unknown option(s) {bad} for {kind}; known: "
                     f"{list(_OPTIONS[kind])}")
  dup = sorted({k for k in keys if keys.count(k) > 1})
  if dup:
    raise ValueError(f"source spec {text!r}: option(s) {dup} given twice")
  opts = dict(pairs)
  weight = _weight(opts.get("weight", "1"), text)
  target = os.path.expanduser(target) if kind in ("jsonl", "arrayrecord") else target
  name = opts.get("name") or _default_name(kind, target)
  return Spec(kind, target, tuple(sorted(opts.items())), raw, name, weight)


def _weight(value, where: str) -> float:
  try:
    w = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"source {where!r}: weight {value!r} is not a number") from None
  if not math.isfinite(w) or w <= 0:
    raise ValueError(f"source {where!r}: weight must be > 0, got {value!r}")
  return w


def _items(value) -> list[Any]:
  """data.sources / data.source -> a list of spec strings or {spec, weight, name} mappings."""
  if isinstance(value, str):
    return [s for s in (p.strip() for p in re.split(r"[;\n]", value)) if s]
  if hasattr(value, "items") and _is_entry(value):  # one {spec, weight} entry
    return [value]
  if hasattr(value, "items"):  # name -> spec / {spec, weight}
    out = []
    for name, v in value.items():
      entry = {"spec": v} if isinstance(v, str) else dict(v)
      entry.setdefault("name", name)
      out.append(entry)
    return out
  if isinstance(value, Sequence) or hasattr(value, "__iter__"):
    return list(value)
  raise ValueError(f"config.data.sources must be a string, a list or a dict, got {value!r}")


def _is_entry(value) -> bool:
  return "spec" in value


def mixture(data_config) -> list[Spec]:
  """The sources of `config.data` with names and weights resolved (see module docstring)."""
  d = data_config
  value, key = d.get("sources"), "config.data.sources"
  if not value:
    value, key = d.get("source", "world"), "config.data.source"
  out = []
  for item in _items(value):
    if isinstance(item, str):
      try:
        out.append(parse(item))
      except ValueError as e:  # name the config key as well as the spec
        raise ValueError(f"{key}: {e}") from None
      continue
    if not hasattr(item, "get") or not isinstance(item.get("spec"), str):
      raise ValueError(f"{key}: each entry must be a spec string or have a `spec` string, got "
                       f"{item!r}")
    extra = sorted(set(dict(item)) - {"spec", "weight", "name"})
    if extra:
      raise ValueError(f"{key}: entry {item!r} has unknown key(s) {extra} (spec, weight, name)")
    try:
      s = parse(item["spec"])
    except ValueError as e:
      raise ValueError(f"{key}: {e}") from None
    if item.get("weight") is not None:
      s = dataclasses.replace(s, weight=_weight(item["weight"], f"{key}: {item['spec']}"))
    if item.get("name"):
      s = dataclasses.replace(s, name=str(item["name"]))
    out.append(s)
  if not out:
    raise ValueError(f"{key} names no source")
  return _unique_names(out, key)


def _unique_names(specs: list[Spec], key: str) -> list[Spec]:
  explicit = [s.name for s in specs if s.option("name")]
  dup = sorted({n for n in explicit if explicit.count(n) > 1})
  if dup:
    raise ValueError(f"{key}: source name(s) {dup} used twice")
  seen: dict[str, int] = {}
  out = []
  for s in specs:
    n = seen[s.name] = seen.get(s.name, 0) + 1
    out.append(s if n == 1 else dataclasses.replace(s, name=f"{s.name}-{n}"))
  names = [s.name for s in out]
  if len(set(names)) != len(names):
    raise ValueError(f"{key}: source names {names} are not unique; set name= options")
  return out


def open_source(spec: Spec | str):
  """The raw-record source of a file / TFDS spec (see module docstring)."""
  s = parse(spec) if isinstance(spec, str) else spec
  if s.kind == "jsonl":
    src = jsonl.JsonlSource(s.target)
  elif s.kind == "arrayrecord":
    src = arrayrecord.ArrayRecordSource(s.target)
  elif s.kind == "tfds":
    data_dir = s.option("data_dir")
    src = tfds_interleaved.TfdsSource(s.target, data_dir=os.path.expanduser(data_dir)
                                      if data_dir else None, split=s.option("split", "train"))
  else:
    raise ValueError(f"source {s.text!r}: the world is procedural; it has no raw records")
  src.image_root = s.image_root
  src.spec = s
  return src
