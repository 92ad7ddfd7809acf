"""THE parameter-name mapping: one table per external format, read by import and export alike.

An entry is (ours, theirs, kind). `ours` is a flat path into our params in the unscanned layout
("stack/layers_{i}/txt/q_proj/kernel"; scanned trees are converted with tensors.unscan/rescan),
`theirs` the tensor name in the Hugging Face / diffusers checkpoint. `{i}` stands for the layer
index. `kind` says how the array changes between the two (see to_theirs / to_ours):

  copy     same shape both sides (embeddings, norm scales)
  vector   a bias / scale: ours may split heads ([H, hd]), theirs is flat
  linear   ours kernel [in, *out] (e.g. q_proj [embed, heads, head_dim]), theirs torch
           Linear weight [prod(out), in]
  linear2  as linear with two input dims (o_proj [heads, head_dim, embed] <- [embed, H*hd])
  conv     ours flax Conv kernel [kh, kw, in, out], theirs torch Conv2d weight [out, in, kh, kw]
"""

from __future__ import annotations

import math
import re

import numpy as np

_N_IN = {"linear": 1, "linear2": 2}


def to_theirs(x: np.ndarray, kind: str) -> np.ndarray:
  x = np.asarray(x)
  if kind == "copy":
    return x
  if kind == "vector":
    return x.reshape(-1)
  if kind in _N_IN:
    n_in = _N_IN[kind]
    return x.reshape(math.prod(x.shape[:n_in]), -1).T
  if kind == "conv":
    return x.transpose(3, 2, 0, 1)
  raise ValueError(f"unknown mapping kind {kind!r}")


def to_ours(w: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """Their tensor in our layout; `shape` is our parameter's shape (it fixes the head split)."""
  w = np.asarray(w)
  if kind not in ("copy", "vector", "conv", *_N_IN):
    raise ValueError(f"unknown mapping kind {kind!r}")
  try:
    if kind == "vector":
      out = w.reshape(shape)
    elif kind in _N_IN:
      out = w.T.reshape(shape)
    else:
      out = w.transpose(2, 3, 1, 0) if kind == "conv" else w
  except ValueError:
    out = w  # fails the shape check below with both shapes named
  if tuple(out.shape) != tuple(shape):
    raise ValueError(f"shape mismatch: theirs {w.shape} ({kind}) -> {out.shape}, ours {shape}")
  return out


# --- Qwen2 / Qwen2.5 (and Llama-style decoders with the same names) -> the text pathway.
QWEN2_TOP = (
    ("embed_tokens/embedding", "model.embed_tokens.weight", "copy"),
    ("txt_norm/scale", "model.norm.weight", "copy"),
    ("lm_head/kernel", "lm_head.weight", "linear"),  # untied models only
)
QWEN2_LAYER = (  # ours under stack/layers_{i}/txt/, theirs under model.layers.{i}.
    ("input_layernorm/scale", "input_layernorm.weight", "copy"),
    ("post_attention_layernorm/scale", "post_attention_layernorm.weight", "copy"),
    ("q_proj/kernel", "self_attn.q_proj.weight", "linear"),
    ("k_proj/kernel", "self_attn.k_proj.weight", "linear"),
    ("v_proj/kernel", "self_attn.v_proj.weight", "linear"),
    ("q_proj/bias", "self_attn.q_proj.bias", "vector"),  # qkv_bias models only
    ("k_proj/bias", "self_attn.k_proj.bias", "vector"),
    ("v_proj/bias", "self_attn.v_proj.bias", "vector"),
    ("o_proj/kernel", "self_attn.o_proj.weight", "linear2"),
    ("mlp/gate_proj/kernel", "mlp.gate_proj.weight", "linear"),
    ("mlp/up_proj/kernel", "mlp.up_proj.weight", "linear"),
    ("mlp/down_proj/kernel", "mlp.down_proj.weight", "linear"),
)


def qwen2_entries(depth: int, tied: bool, bias: bool) -> list[tuple[str, str, str]]:
  """The Qwen2 table expanded for one model: every (ours, theirs, kind) that exists in it."""
  out = [e for e in QWEN2_TOP if not (tied and e[0].startswith("lm_head"))]
  for i in range(depth):
    for ours, theirs, kind in QWEN2_LAYER:
      if bias or not ours.endswith("/bias"):
        out.append((f"stack/layers_{i}/txt/{ours}", f"model.layers.{i}.{theirs}", kind))
  return out


# --- SigLIP vision tower (SiglipVisionModel / SiglipModel.vision_model) -> model/siglip.py.
# Their names without the "vision_model." prefix that SiglipModel (and older SiglipVisionModel)
# checkpoints carry; the importer finds which of the two a checkpoint uses.
SIGLIP_TOP = (  # ours relative to the tower's params
    ("position_embedding", "embeddings.position_embedding.weight", "copy"),
    ("encoder/patch_kernel", "embeddings.patch_embedding.weight", "conv"),
    ("encoder/patch_bias", "embeddings.patch_embedding.bias", "copy"),
    ("encoder/post_layernorm/scale", "post_layernorm.weight", "copy"),
    ("encoder/post_layernorm/bias", "post_layernorm.bias", "copy"),
)
SIGLIP_LAYER = (  # ours under encoder/layers_{i}/, theirs under encoder.layers.{i}.
    ("layer_norm1/scale", "layer_norm1.weight", "copy"),
    ("layer_norm1/bias", "layer_norm1.bias", "copy"),
    ("layer_norm2/scale", "layer_norm2.weight", "copy"),
    ("layer_norm2/bias", "layer_norm2.bias", "copy"),
    *((f"{n}_proj/{w}", f"self_attn.{n}_proj.{t}", kind)
      for n in ("q", "k", "v", "out") for w, t, kind in (("kernel", "weight", "linear"),
                                                          ("bias", "bias", "copy"))),
    *((f"{n}/{w}", f"mlp.{n}.{t}", kind)
      for n in ("fc1", "fc2") for w, t, kind in (("kernel", "weight", "linear"),
                                                  ("bias", "bias", "copy"))),
)


def siglip_entries(depth: int, prefix: str = "", theirs_prefix: str = ""):
  """Ours under `prefix` (e.g. "vit/"), theirs under `theirs_prefix` ("" or "vision_model.")."""
  out = [(prefix + o, theirs_prefix + t, k) for o, t, k in SIGLIP_TOP]
  for i in range(depth):
    out += [(f"{prefix}encoder/layers_{i}/{o}", f"{theirs_prefix}encoder.layers.{i}.{t}", k)
            for o, t, k in SIGLIP_LAYER]
  return out


def import_entries(flat: dict, theirs: dict, entries, source: str) -> list[str]:
  """Fills flat[ours] from theirs[name] for every entry, in place; returns the report (every
  mapped tensor, then every tensor of theirs left unused). Missing tensors on either side
  raise, naming them."""
  missing = [t for _, t, _ in entries if t not in theirs]
  if missing:
    raise ValueError(f"{source}: checkpoint lacks tensors {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''}")
  absent = [o for o, _, _ in entries if o not in flat]
  if absent:
    raise ValueError(f"the model has no parameters {absent[:8]} for {source}; its config "
                     "disagrees with the checkpoint")
  report = []
  for ours, t, kind in entries:
    dst = flat[ours]
    try:
      flat[ours] = to_ours(theirs[t], kind, tuple(dst.shape)).astype(dst.dtype)
    except ValueError as e:
      raise ValueError(f"{source}: {t} -> {ours}: {e}") from None
    report.append(f"{t} {list(theirs[t].shape)} {theirs[t].dtype} -> {ours} "
                  f"{list(dst.shape)} ({kind})")
  used = {t for _, t, _ in entries}
  report += [f"{t} {list(theirs[t].shape)} -> UNUSED" for t in sorted(set(theirs) - used)]
  return report


# --- diffusers AutoencoderKL -> model/vae.py. Our module tree mirrors theirs, so the table is a
# rule on each path component ("down_blocks_0" -> "down_blocks.0") plus this leaf table.
VAE_LEAVES = (  # (our leaf, our rank, their leaf, kind)
    ("kernel", 4, "weight", "conv"),
    ("kernel", 2, "weight", "linear"),
    ("scale", 1, "weight", "copy"),
    ("bias", 1, "bias", "copy"),
)


def vae_name(ours: str, rank: int) -> tuple[str, str]:
  """(their name, kind) of one of our VAE parameter paths."""
  *mods, leaf = ours.split("/")
  for our_leaf, our_rank, their_leaf, kind in VAE_LEAVES:
    if (leaf, rank) == (our_leaf, our_rank):
      mods = [re.sub(r"_(\d+)$", r".\1", m) for m in mods]
      return ".".join(mods + [their_leaf]), kind
  raise ValueError(f"no VAE mapping for {ours} (rank {rank})")


def vae_entries(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str, str]]:
  """The VAE table for one model, from our flat {path: shape}."""
  return [(ours, *vae_name(ours, len(shape))) for ours, shape in sorted(shapes.items())]


def markdown() -> str:
  """The tables above as the Markdown table in WORKSPACE.md (a test keeps the two equal)."""
  rows = ["| format | ours (flat path, unscanned) | theirs | kind |", "|---|---|---|---|"]
  groups = (("Qwen2", "", "", QWEN2_TOP),
            ("Qwen2", "stack/layers_{i}/txt/", "model.layers.{i}.", QWEN2_LAYER),
            ("SigLIP", "vit/", "[vision_model.]", SIGLIP_TOP),
            ("SigLIP", "vit/encoder/layers_{i}/", "[vision_model.]encoder.layers.{i}.",
             SIGLIP_LAYER))
  for fmt, pre_o, pre_t, table in groups:
    rows += [f"| {fmt} | `{pre_o}{o}` | `{pre_t}{t}` | {k} |" for o, t, k in table]
  rows += [f"| AutoencoderKL | `<path>/{o}` (rank {r}) | `<path>.{t}` | {k} |"
           for o, r, t, k in VAE_LEAVES]
  return "\n".join(rows)
