"""JSONL documents + an image folder, as a random-access Grain source of raw records.

One JSON object per line, in the raw-record schema of `mogao_jax/data/records.py`:

  {"id": "doc-1", "parts": [{"type": "text", "text": "a cat"},
                            {"type": "image", "path": "cats/1.jpg", "generate": true}],
   "meta": {...}}

Image paths are relative to the image root (the spec's `images=` option; default: the folder of
the first JSONL file). `JsonlSource(paths)` indexes the byte offset of every non-blank line of
every file once, at construction (numpy over 16 MiB chunks), so record i is one
`os.pread`: Grain can shard, shuffle and checkpoint by index, from several threads at once.

Two views of record i: `read(i)` = (the line's bytes, "<file>:<line>" 1-based), what the
pipeline passes to `records.to_document` as record and origin (it parses the line and turns one
that is not a record, e.g. invalid JSON, into a counted issue, never an exception); `src[i]` is
the parsed dict, or None for such a line (offline tools).

Pickles without its file descriptors (reopened lazily), so Grain worker processes can use it.
"""

from __future__ import annotations

import glob
import os
import threading
from typing import Any, Sequence

import numpy as np
from mogao_jax.data import records

_CHUNK = 1 << 24


def expand(pattern: str | Sequence[str]) -> list[str]:
  """Sorted files of a path / glob (or a list of them); raises if nothing matches."""
  pats = [pattern] if isinstance(pattern, str) else list(pattern)
  out = []
  for p in pats:
    hits = sorted(glob.glob(os.path.expanduser(p), recursive=True))
    if not hits:
      raise FileNotFoundError(f"no file matches {p!r}")
    out.extend(h for h in hits if os.path.isfile(h))
  if not out:
    raise FileNotFoundError(f"no file matches {pattern!r} (only directories)")
  return out


_SPACE = np.zeros(256, bool)
_SPACE[[0x20, 0x09, 0x0D, 0x0B, 0x0C]] = True


def _line_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(start offset, length without the newline, 1-based line number) of each non-blank line."""
  size = os.path.getsize(path)
  starts, ends = [np.zeros(1, np.int64)], []
  with open(path, "rb") as f:
    pos = 0
    while pos < size:
      buf = np.frombuffer(f.read(_CHUNK), np.uint8)
      if not len(buf):
        break
      nl = np.flatnonzero(buf == 0x0A).astype(np.int64) + pos
      ends.append(nl)
      starts.append(nl + 1)
      pos += len(buf)
  ends.append(np.array([size], np.int64))
  start, end = np.concatenate(starts), np.concatenate(ends)
  lineno = np.arange(1, len(start) + 1, dtype=np.int64)
  keep = end > start  # empty lines (and the empty tail after a final newline) are no records
  # Lines that start with whitespace may be blank: look at those (rare in JSONL) one by one.
  if keep.any():
    with open(path, "rb") as f:
      mm = np.memmap(f, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
      cand = np.flatnonzero(keep)
      cand = cand[_SPACE[mm[start[cand]]]]
      for i in cand:
        if not bytes(mm[start[i]:end[i]]).strip():
          keep[i] = False
      del mm
  return start[keep], (end - start)[keep], lineno[keep]


class JsonlSource:
  """Random-access raw records of JSONL files (a Grain data source: len + getitem)."""

  def __init__(self, paths: str | Sequence[str]):
    self.paths = expand(paths)
    idx = [_line_index(p) for p in self.paths]
    self._file = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _, _) in enumerate(idx)]
                                or [np.zeros(0, np.int32)])
    self._start = np.concatenate([s for s, _, _ in idx] or [np.zeros(0, np.int64)])
    self._length = np.concatenate([n for _, n, _ in idx] or [np.zeros(0, np.int64)])
    self._lineno = np.concatenate([l for _, _, l in idx] or [np.zeros(0, np.int64)])
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._start)

  def __repr__(self) -> str:
    return f"JsonlSource({len(self.paths)} files, {len(self)} records)"

  def _fd(self, f: int) -> int:
    fd = self._fds.get(f)
    if fd is None:
      with self._lock:
        fd = self._fds.get(f)
        if fd is None:
          fd = self._fds[f] = os.open(self.paths[f], os.O_RDONLY)
    return fd

  def where(self, index: int) -> str:
    return f"{self.paths[self._file[index]]}:{self._lineno[index]}"

  def line(self, index: int) -> bytes:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return os.pread(self._fd(int(self._file[index])), int(self._length[index]),
                    int(self._start[index]))

  def read(self, index: int) -> tuple[bytes, str]:
    """(the line's bytes, "<file>:<line>"): the raw record and origin for to_document."""
    return self.line(index), self.where(int(index))

  def __getitem__(self, index) -> dict[str, Any] | None:
    """The parsed record, or None when the line is not a record (for offline tools)."""
    return parse(self.line(index))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fds"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __del__(self):
    try:
      for fd in self._fds.values():
        os.close(fd)
    except Exception:  # noqa: BLE001  (interpreter shutdown: os may be gone)
      pass


def parse(data: bytes) -> dict[str, Any] | None:
  """records.loads, or None when `data` is not a record."""
  try:
    return records.loads(data)
  except ValueError:
    return None
