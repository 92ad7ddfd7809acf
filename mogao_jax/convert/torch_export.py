"""Export the whole model for PyTorch: `model.safetensors` + `config.json` + `torch_model.py`.

The tensor names are our flat parameter paths in the unscanned layout with "/" -> "."
("stack.layers_0.txt.q_proj.kernel"); the arrays keep our layouts (kernels [in, *out]), which
torch_model.py reads directly, so there is no second name table to keep in sync.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from mogao_jax.convert import tensors

_TORCH_MODEL = os.path.join(os.path.dirname(__file__), "torch_model.py")


def state_dict(params: dict) -> dict[str, np.ndarray]:
  """Our params (any layout) as the flat float32 tensors torch_model.Mogao loads."""
  flat = tensors.flatten(params)
  if tensors.is_scanned(flat):
    depth = next(v.shape[0] for k, v in flat.items() if k.startswith("stack/layers/"))
    flat = tensors.unscan(flat, depth)
  return {k.replace("/", "."): np.asarray(v, np.float32) for k, v in flat.items()}


def export(params: dict, cfg, out_dir: str) -> list[str]:
  """Writes the export directory; `cfg` is the ModelConfig. Returns one line per tensor."""
  os.makedirs(out_dir, exist_ok=True)
  sd = state_dict(params)
  tensors.write_file(os.path.join(out_dir, "model.safetensors"), sd, {"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  shutil.copy(_TORCH_MODEL, os.path.join(out_dir, "torch_model.py"))
  return [f"{k} {list(v.shape)}" for k, v in sorted(sd.items())]
