"""Safetensors files and parameter trees as flat {"a/b/c": array} dicts.

The reader is our own (the format is an 8-byte header length, a JSON header and raw bytes) so
bfloat16 checkpoints load into numpy (via ml_dtypes) without torch and without touching a device.
"""

from __future__ import annotations

import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

from mogao_jax import trees

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file, memory-mapped, in their stored dtype."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  data = np.memmap(path, np.uint8, "r", offset=8 + n)
  out = {}
  for name, h in header.items():
    if name == "__metadata__":
      continue
    if h["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {h['dtype']}")
    b, e = h["data_offsets"]
    out[name] = data[b:e].view(_DTYPES[h["dtype"]]).reshape(h["shape"])
  return out


def read_dir(path: str) -> dict[str, np.ndarray]:
  """Every tensor of every *.safetensors file in a directory (sharded checkpoints too)."""
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  out = {}
  for f in files:
    out.update(read_file(f))
  return out


def write_file(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
  """Writes a .safetensors file (any reader, incl. safetensors.torch, loads it)."""
  header, offset, blobs = {}, 0, []
  for name in sorted(tensors):
    x = np.ascontiguousarray(tensors[name])
    blob = x.tobytes()
    header[name] = {"dtype": _NAMES[x.dtype], "shape": list(x.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  if metadata:
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
      f.write(blob)


def read_json(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found")
  with open(path) as f:
    return json.load(f)


def flatten(tree) -> dict:
  """{"a": {"b": x}} -> {"a/b": x}."""
  return trees.flatten(tree, "/")


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def unscan(flat: dict, depth: int) -> dict:
  """Scanned layout (stack/layers/... with a leading depth axis) -> stack/layers_{i}/..."""
  out = {}
  for k, v in flat.items():
    if k.startswith("stack/layers/"):
      rest = k[len("stack/layers/"):]
      for i in range(depth):
        out[f"stack/layers_{i}/{rest}"] = v[i]
    else:
      out[k] = v
  return out


def rescan(flat: dict, depth: int) -> dict:
  """stack/layers_{i}/... -> the scanned layout (stacked on a leading axis)."""
  out, per_layer = {}, {}
  for k, v in flat.items():
    if k.startswith("stack/layers_"):
      i, rest = k[len("stack/layers_"):].split("/", 1)
      per_layer.setdefault(rest, {})[int(i)] = v
    else:
      out[k] = v
  for rest, by_i in per_layer.items():
    out[f"stack/layers/{rest}"] = np.stack([np.asarray(by_i[i]) for i in range(depth)])
  return out


def is_scanned(flat: dict) -> bool:
  return any(k.startswith("stack/layers/") for k in flat)
