"""Tiny random pretrained parts in the layout experiments/tiny_latent.py reads, written with
`transformers` / `diffusers` locally (no downloads): DIR/qwen2 (Qwen2ForCausalLM), DIR/siglip
(SiglipVisionModel), DIR/vae (AutoencoderKL). Needs the `hf` and `torch` extras.

    write_parts(DIR)                          # the default shapes
    write_parts(DIR, SHAPES["other"])         # tied embeddings, MHA, 16 latent channels, ...
"""

import json
import os

SHAPES = {
    "default": dict(
        qwen2=dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
        siglip=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=2, image_size=16, patch_size=4),
        vae=dict(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                 scaling_factor=0.13025)),
    # Other shapes on every axis the experiment must take from the parts' configs.
    "other": dict(
        qwen2=dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=1,
                   num_attention_heads=3, num_key_value_heads=3, tie_word_embeddings=True),
        siglip=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                    num_attention_heads=3, image_size=24, patch_size=6),
        vae=dict(block_out_channels=(8, 8, 16), latent_channels=16, norm_num_groups=4,
                 use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                 shift_factor=0.1159)),
}


def shape_configs(shape: str = "default") -> dict:
  """The config.json entries experiments/tiny_latent.py reads, of SHAPES[shape]."""
  s = SHAPES[shape]
  return {"qwen2": dict(model_type="qwen2", rope_theta=10_000.0, **s["qwen2"]),
          "siglip": dict(s["siglip"]), "vae": dict(s["vae"])}


CONFIGS = shape_configs("default")

# Real sizes, config.json alone (the dry run of experiments/mogao_from_parts.py): Qwen2.5-7B
# (Qwen/Qwen2.5-7B config.json), SigLIP-so400m-patch14-384 (google/siglip-so400m-patch14-384,
# its vision_config) and a FLUX.1-style 16-channel AutoencoderKL (black-forest-labs/FLUX.1-dev
# vae/config.json).
REAL_CONFIGS = {
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=152064,
                  hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, hidden_act="silu",
                  max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                  rope_scaling=None, tie_word_embeddings=False, use_sliding_window=False,
                  sliding_window=None, bos_token_id=151643, eos_token_id=151643),
    "siglip": dict(model_type="siglip", vision_config=dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
        num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14,
        num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")),
    "vae": dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=16,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
                sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False),
}


def recipe_config(parts: str, arg: str = "target=h100:8"):
  """experiments/mogao_from_parts.py's config for a parts directory and config arguments."""
  from mogao_jax import config_args  # pylint: disable=g-import-not-at-top
  from tests.configs import REPO  # pylint: disable=g-import-not-at-top
  return config_args.load_experiment(REPO / "experiments" / "mogao_from_parts.py").get_config(
      f"parts={parts},{arg}")


def config_only_parts(root, skip: str = "", configs: dict | None = None) -> str:
  """A parts directory of config.json files and empty weight files: enough for reading the
  experiment config and for a dry run (no torch), not for training. `skip` leaves one part
  out; `configs` (default CONFIGS) as shape_configs(...) or REAL_CONFIGS."""
  for name, cfg in (configs or CONFIGS).items():
    if name == skip:
      continue
    d = os.path.join(str(root), name)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
      json.dump(cfg, f)
    open(os.path.join(d, "model.safetensors"), "wb").close()
  return str(root)


def _perturb(model, seed: int):
  """Every parameter + 0.05 N(0, 1): biases and norm scales are not at their init."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def write_parts(path: str, shapes: dict | None = None, seed: int = 0) -> str:
  import transformers  # pylint: disable=g-import-not-at-top
  s = shapes or SHAPES["default"]
  q = transformers.Qwen2Config(rms_norm_eps=1e-6, max_position_embeddings=512,
                               rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
                               **s["qwen2"])
  _perturb(transformers.Qwen2ForCausalLM(q), seed).save_pretrained(os.path.join(path, "qwen2"))
  v = transformers.SiglipVisionConfig(**s["siglip"])
  _perturb(transformers.SiglipVisionModel(v), seed + 1).save_pretrained(
      os.path.join(path, "siglip"))
  write_vae(os.path.join(path, "vae"), s["vae"], seed + 2)
  return path


def write_vae(path: str, shape: dict | None = None, seed: int = 2) -> str:
  """A tiny random diffusers AutoencoderKL directory (config.json + safetensors)."""
  import diffusers  # pylint: disable=g-import-not-at-top
  shape = shape or SHAPES["default"]["vae"]
  n = len(shape["block_out_channels"])
  vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, layers_per_block=1,
                                down_block_types=("DownEncoderBlock2D",) * n,
                                up_block_types=("UpDecoderBlock2D",) * n, **shape)
  _perturb(vae, seed).save_pretrained(path)
  return path


def write_world_jsonl(folder: str, n_docs: int, image_size: int, seed: int = 0,
                      weights: dict | None = None) -> str:
  """n_docs documents of the built-in world (every kind, or `weights` kind -> weight) as JSONL
  lines whose image parts are paths of PNG files in folder/images: the raw-record format of
  real data (data/records.py). Returns the source spec `jsonl:...?images=...`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from mogao_jax.data import documents  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.sources import world  # pylint: disable=g-import-not-at-top
  weights = weights or {"t2i": 0.4, "caption": 0.2, "vqa": 0.2, "edit": 0.1, "story": 0.1}
  images = os.path.join(folder, "images")
  os.makedirs(images, exist_ok=True)
  with open(os.path.join(folder, "docs.jsonl"), "w") as f:
    for i in range(n_docs):
      doc = world.make_document(seed, i, image_size, weights)
      parts = []
      for j, p in enumerate(doc.parts):
        if isinstance(p, documents.Text):
          parts.append({"type": "text", "text": p.text})
          continue
        name = f"{i:05d}_{j}.png"
        Image.fromarray(p.pixels).save(os.path.join(images, name))
        parts.append({"type": "image", "path": name, "generate": bool(p.generate)})
      f.write(json.dumps({"id": f"doc-{i}", "kind": doc.kind, "parts": parts}) + "\n")
  return f"jsonl:{os.path.join(folder, 'docs.jsonl')}?images={images}"
