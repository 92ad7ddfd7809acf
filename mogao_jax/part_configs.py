"""Our config keys from pretrained parts' own config.json files (stdlib only, so experiment
files can read them without importing JAX): a Hugging Face Qwen2 (or bias-free Llama), a
SigLIP vision model and a diffusers AutoencoderKL.

    keys = qwen2_keys(dir)       # model.* of the text pathway
    keys = siglip_keys(dir)      # model.vit* of the understanding tower, + its patch size
    keys = vae_keys(dir)         # the VAE's latent channels and spatial downsampling
    q, s, v = parts_dir(dir)     # dir/qwen2, dir/siglip, dir/vae, each checked
    check_image_size(res, ...)   # a side both encoders take, else the nearest valid ones

Nothing here chooses a size: every number comes from the parts' files.
"""

from __future__ import annotations

import glob
import json
import math
import os

PARTS = ("qwen2", "siglip", "vae")


def read_config(path: str) -> dict:
  f = os.path.join(path, "config.json")
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{f}: missing (a Hugging Face / diffusers model directory has its "
                            "config.json)")
  with open(f) as fh:
    try:
      return json.load(fh)
    except json.JSONDecodeError as e:
      raise ValueError(f"{f}: not valid JSON ({e})") from e


def parts_dir(path: str) -> tuple[str, str, str]:
  """(qwen2, siglip, vae) directories under `path`; FileNotFoundError naming the first part
  or file that is missing (config.json and *.safetensors in each)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"parts directory {path}: no such directory (want {path}/qwen2, "
                            f"{path}/siglip, {path}/vae)")
  out = []
  for name in PARTS:
    d = os.path.join(path, name)
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d}: missing part (a parts directory holds {', '.join(PARTS)})")
    read_config(d)
    if not glob.glob(os.path.join(d, "*.safetensors")):
      raise FileNotFoundError(f"{d}: no *.safetensors weights")
    check_weights(d, name)
    out.append(d)
  return tuple(out)


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Tensor name -> shape of every *.safetensors file in `path`, from the files' headers only
  (8-byte little-endian length + JSON; no tensor is read). Empty files (the config-only parts
  of a dry run) hold nothing."""
  out = {}
  for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
    if os.path.getsize(f) == 0:
      continue
    with open(f, "rb") as fh:
      try:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
      except (ValueError, MemoryError) as e:
        raise ValueError(f"{f}: not a safetensors file (unreadable header: {e})") from e
    out.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
  return out


def _expected_shapes(hf: dict, part: str) -> list[tuple[str, int, str, int]]:
  """(tensor, dim, config key, size) that the part's config.json implies (Hugging Face
  Qwen2ForCausalLM / SiglipVisionModel / SiglipModel and diffusers AutoencoderKL names)."""
  if part == "qwen2":
    h, heads = hf["hidden_size"], hf["num_attention_heads"]
    hd = hf.get("head_dim") or h // heads
    kv = hf.get("num_key_value_heads") or heads
    lay = "model.layers.0."
    return [("model.embed_tokens.weight", 0, "vocab_size", hf["vocab_size"]),
            ("model.embed_tokens.weight", 1, "hidden_size", h),
            (lay + "self_attn.q_proj.weight", 0, "num_attention_heads", heads * hd),
            (lay + "self_attn.k_proj.weight", 0, "num_key_value_heads", kv * hd),
            (lay + "mlp.gate_proj.weight", 0, "intermediate_size", hf["intermediate_size"]),
            ("lm_head.weight", 0, "vocab_size", hf["vocab_size"])]
  if part == "siglip":
    v = hf.get("vision_config", hf)
    p, emb = v["patch_size"], "embeddings."  # "vision_model." prefixes dropped (check_weights)
    return [(emb + "patch_embedding.weight", 0, "hidden_size", v["hidden_size"]),
            (emb + "patch_embedding.weight", 2, "patch_size", p),
            (emb + "position_embedding.weight", 0, "image_size", (v["image_size"] // p) ** 2),
            ("encoder.layers.0.mlp.fc1.weight", 0, "intermediate_size",
             v["intermediate_size"])]
  blocks = hf.get("block_out_channels", (128, 256, 512, 512))
  latent = hf.get("latent_channels", 4)
  return [("encoder.conv_in.weight", 0, "block_out_channels", blocks[0]),
          ("encoder.conv_out.weight", 1, "block_out_channels", blocks[-1]),
          ("encoder.conv_out.weight", 0, "latent_channels", 2 * latent),
          ("decoder.conv_in.weight", 1, "latent_channels", latent)]


def _layer_count(shapes: dict, prefix: str) -> int:
  idx = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
  return max(idx) + 1 if idx else 0


def check_weights(path: str, part: str) -> None:
  """ValueError naming the file, the config key and the tensor where a part's config.json
  and its safetensors disagree (e.g. hidden_size against the embedding's shape)."""
  shapes = safetensors_shapes(path)
  if not shapes:
    return
  hf, cfg = read_config(path), os.path.join(path, "config.json")
  if part == "siglip":  # SiglipModel names its tower vision_model.*, SiglipVisionModel may not
    shapes = {k.removeprefix("vision_model."): v for k, v in shapes.items()}
  counts = {"qwen2": [("model.layers.", "num_hidden_layers", hf.get("num_hidden_layers"))],
            "siglip": [("encoder.layers.", "num_hidden_layers",
                        hf.get("vision_config", hf).get("num_hidden_layers"))],
            "vae": [("encoder.down_blocks.", "block_out_channels",
                     len(hf.get("block_out_channels", (128, 256, 512, 512))))]}[part]
  for prefix, key, want in counts:
    have = _layer_count(shapes, prefix)
    if have and want is not None and have != want:
      raise ValueError(f"{cfg}: {key} says {want} layers / blocks but the safetensors in "
                       f"{path} hold {have} ({prefix}N.*)")
  for tensor, dim, key, want in _expected_shapes(hf, part):
    shape = shapes.get(tensor)
    if shape is not None and (len(shape) <= dim or shape[dim] != want):
      raise ValueError(f"{cfg}: {key}={_value(hf, key)} does not match the weights: "
                       f"{tensor} in {path}/*.safetensors has shape {list(shape)} (dimension "
                       f"{dim} should be {want})")


def _value(hf: dict, key: str):
  return hf.get(key, hf.get("vision_config", {}).get(key))


def _rope_theta(hf: dict, path: str) -> float:
  rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = rp.get("rope_type", rp.get("type", "default"))
  if kind != "default":
    raise ValueError(f"{path}/config.json: rope type {kind!r} is not supported (IL-RoPE extends "
                     "plain RoPE only)")
  theta = rp.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise ValueError(f"{path}/config.json has no rope_theta")
  return float(theta)


def _qkv_bias(hf: dict, path: str) -> bool:
  mtype = hf.get("model_type")
  if mtype == "qwen2":
    return True  # Qwen2 always has q/k/v bias (and none on o_proj / the MLP)
  if mtype == "llama":
    if hf.get("attention_bias") or hf.get("mlp_bias"):
      raise ValueError(f"{path}/config.json: llama with attention_bias/mlp_bias has o_proj or "
                       "MLP biases, which the text pathway does not have")
    return False
  raise ValueError(f"{path}/config.json: model_type {mtype!r} is not supported "
                   "(expected 'qwen2' or 'llama')")


def qwen2_keys(path: str) -> dict:
  """Our `model.*` keys implied by a Qwen2 / Llama checkpoint's config.json."""
  hf = read_config(path)
  if hf.get("use_sliding_window"):
    raise ValueError(f"{path}/config.json: use_sliding_window=true is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}/config.json: hidden_act {hf['hidden_act']!r}, expected 'silu'")
  heads = hf["num_attention_heads"]
  return dict(
      vocab_size=hf["vocab_size"], width=hf["hidden_size"], depth=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], qkv_bias=_qkv_bias(hf, path),
      qk_norm=False,  # Qwen2 has no QK-norm
      rope_theta=_rope_theta(hf, path),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)))


def siglip_vision(path: str) -> dict:
  """The vision config of a SiglipVisionModel or SiglipModel directory."""
  hf = read_config(path)
  return hf.get("vision_config", hf)


def siglip_keys(path: str) -> dict:
  """Our `model.vit*` keys (and model.patch_dim) implied by a SigLIP config.json."""
  c = siglip_vision(path)
  p = c["patch_size"]
  return dict(vit="siglip", vit_width=c["hidden_size"], vit_depth=c["num_hidden_layers"],
              vit_heads=c["num_attention_heads"], vit_mlp_dim=c["intermediate_size"],
              vit_pos_grid=c["image_size"] // p, vit_norm_eps=c.get("layer_norm_eps", 1e-6),
              patch_dim=p * p * c.get("num_channels", 3))


def vae_keys(path: str) -> dict:
  """latent_channels and factor (spatial downsampling) of a diffusers AutoencoderKL."""
  hf = read_config(path)
  return dict(latent_channels=hf.get("latent_channels", 4),
              factor=2 ** (len(hf.get("block_out_channels", (128, 256, 512, 512))) - 1))


def valid_image_sizes(near: int, patch: int, factor: int, latent_patch: int,
                      count: int = 2) -> list[int]:
  """The image sides nearest to `near` that both encoders take: multiples of lcm(SigLIP patch,
  VAE downsampling x latent_patch), `count` below (or at) and above it."""
  step = math.lcm(patch, factor * latent_patch)
  below = [near // step * step - i * step for i in range(count)]
  above = [(near // step + 1 + i) * step for i in range(count)]
  return sorted(s for s in below + above if s > 0)


def check_image_size(res: int, patch: int, factor: int, latent_patch: int, siglip: str = "",
                     vae: str = "") -> None:
  """ValueError naming the valid sides nearest to `res` unless it divides by the SigLIP patch
  and by the VAE's downsampling x latent_patch."""
  if res > 0 and res % patch == 0 and res % (factor * latent_patch) == 0:
    return
  sizes = valid_image_sizes(res, patch, factor, latent_patch)
  raise ValueError(
      f"config argument res={res}: must be a multiple of the SigLIP patch {patch} ({siglip}) "
      f"and of the VAE's downsampling {factor} x latent_patch={latent_patch} ({vae}), i.e. of "
      f"{math.lcm(patch, factor * latent_patch)}; the nearest valid sizes: "
      f"{', '.join(map(str, sizes))} (res=N)")
