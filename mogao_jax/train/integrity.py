"""Checkpoint integrity: a manifest of every file of a step (size + sha256), verified on restore.

``write(step_dir)`` hashes every file under the step's item directories (``state/``, ``data/``,
``config/``, ``tokenizer/``) into ``<step_dir>/integrity.json``. The Checkpointer calls it from
orbax's ``post_finalization_callback``: in orbax's background save thread, after the items are
finalized and BEFORE the tmp dir is renamed to its step (the commit), so hashing never sits on the
step's critical path and a committed step that lacks its manifest is one written by an older
version (or with ``train.async_checkpointing = False`` killed between the save and the manifest).

``check(step_dir)`` -> None when every listed file is there with its size and hash, ``UNVERIFIED``
when there is no manifest, else a sentence naming the first damaged file: only that last case
proves a step corrupt (restore_latest sets such a step aside and falls back).
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "integrity.json"
UNVERIFIED = "unverified"
_CHUNK = 1 << 22


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      h.update(block)
  return h.hexdigest()


def _item_files(step_dir: str) -> list[str]:
  """Relative paths of the files in the step's item dirs (orbax's top-level metadata files are
  left out: orbax may touch them at commit)."""
  out = []
  for item in sorted(os.listdir(step_dir)):
    top = os.path.join(step_dir, item)
    if not os.path.isdir(top):
      continue
    for root, _, files in os.walk(top):
      out += [os.path.relpath(os.path.join(root, f), step_dir) for f in files]
  return sorted(out)


def write(step_dir: str) -> dict[str, list]:
  """Hashes the step's files into ``<step_dir>/integrity.json`` (atomic: tmp + rename)."""
  files = {}
  for rel in _item_files(step_dir):
    path = os.path.join(step_dir, rel)
    files[rel] = [os.path.getsize(path), _sha256(path)]
  tmp = os.path.join(step_dir, f".{MANIFEST}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump({"format": 1, "files": files}, f, indent=0, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))
  return files


def check(step_dir: str) -> str | None:
  """None if the step verifies, ``UNVERIFIED`` without a manifest, else what is damaged."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return UNVERIFIED
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    return f"its manifest {path} is unreadable ({e})"
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f"{rel} is missing"
    if os.path.getsize(full) != size:
      return f"{rel} has {os.path.getsize(full)} bytes, {size} when saved (truncated?)"
    if _sha256(full) != digest:
      return f"{rel} fails its sha256 check (the bytes changed after the save)"
  return None
