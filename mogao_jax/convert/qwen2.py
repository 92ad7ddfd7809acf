"""Qwen2 / Qwen2.5 <-> the text pathway (embeddings, layers, final norm, LM head).

    params, report = import_text(params, "/path/to/qwen")      # any layout, returns the same
    export_text(params, model_cfg, "/out/dir")                  # Qwen2ForCausalLM loads it

Sizes come from the checkpoint's config.json (`model_keys`); a model config that disagrees is
refused naming every differing key (`check_config`). Names follow mapping.QWEN2_*.
Also reads Llama-style checkpoints without attention bias (same tensor names, no q/k/v bias).
"""

from __future__ import annotations

import json
import os

import numpy as np

from mogao_jax import part_configs
from mogao_jax.convert import mapping, tensors


def model_keys(path: str) -> dict:
  """Our `model.*` keys implied by the checkpoint's config.json (part_configs.qwen2_keys)."""
  return part_configs.qwen2_keys(path)


def check_config(model_cfg, path: str) -> None:
  """Raises naming every `model.*` key that differs from the checkpoint's config.json."""
  want = model_keys(path)
  bad = []
  for k, theirs in want.items():
    ours = getattr(model_cfg, k) if hasattr(model_cfg, k) else model_cfg[k]
    same = (np.isclose(ours, theirs, rtol=1e-9, atol=0) if isinstance(theirs, float)
            else ours == theirs)
    if not same:
      bad.append(f"model.{k}={ours!r} (checkpoint: {theirs!r})")
  if bad:
    raise ValueError(f"the model config disagrees with {path}/config.json: {'; '.join(bad)}. "
                     "Set these keys (mogao_jax.convert.qwen2.model_keys gives them all).")


def _as_flat(params) -> tuple[dict, bool, int]:
  flat = tensors.flatten(params)
  scanned = tensors.is_scanned(flat)
  depth = (next(v.shape[0] for k, v in flat.items() if k.startswith("stack/layers/"))
           if scanned else len({k.split("/")[1] for k in flat if k.startswith("stack/layers_")}))
  return (tensors.unscan(flat, depth) if scanned else flat), scanned, depth


def _from_flat(flat: dict, scanned: bool, depth: int) -> dict:
  return tensors.unflatten(tensors.rescan(flat, depth) if scanned else flat)


def import_text(params: dict, path: str) -> tuple[dict, list[str]]:
  """Loads a Qwen2 checkpoint directory into the text pathway of `params` (a plain nested dict,
  scanned or unscanned). Returns the new params (numpy leaves where replaced) and a report line
  per tensor: every mapped tensor, then every checkpoint tensor left unused."""
  keys = model_keys(path)
  flat, scanned, depth = _as_flat(params)
  theirs = tensors.read_dir(path)
  entries = mapping.qwen2_entries(keys["depth"], keys["tie_embeddings"], keys["qkv_bias"])
  report = mapping.import_entries(flat, theirs, entries, path)
  return _from_flat(flat, scanned, depth), report


def hf_config(cfg) -> dict:
  """A config.json for Qwen2ForCausalLM with our text pathway's sizes."""
  if cfg.qk_norm:
    raise ValueError("model.qk_norm=True: Qwen2 has no QK-norm, the text pathway cannot be "
                     "exported as hf-qwen2")
  return {
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.width,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.depth,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
      # both spellings: transformers >= 5 reads rope_parameters, older versions rope_theta
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": 32768,
      "use_sliding_window": False, "initializer_range": 0.02, "dtype": "float32",
  }


def export_text(params: dict, cfg, out_dir: str) -> list[str]:
  """Writes the text pathway as a Hugging Face Qwen2 directory (config.json + model.safetensors).

  A model without q/k/v bias exports zero biases (Qwen2 always has them): the same function.
  """
  flat, _, depth = _as_flat(params)
  conf = hf_config(cfg)
  report, out = [], {}
  for ours, t, kind in mapping.qwen2_entries(depth, cfg.tie_embeddings, bias=True):
    if ours in flat:
      out[t] = mapping.to_theirs(flat[ours], kind).astype(np.float32)
      report.append(f"{ours} {list(np.shape(flat[ours]))} -> {t} {list(out[t].shape)} ({kind})")
    elif ours.endswith("/bias") and not cfg.qkv_bias:
      n = (cfg.num_heads if "q_proj" in ours else cfg.num_kv_heads) * cfg.head_dim
      out[t] = np.zeros((n,), np.float32)
      report.append(f"(no bias) -> {t} [{n}] zeros")
    else:
      raise ValueError(f"params lack {ours}, needed for {t}")
  os.makedirs(out_dir, exist_ok=True)
  tensors.write_file(os.path.join(out_dir, "model.safetensors"), out, {"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(conf, f, indent=2)
  return report
