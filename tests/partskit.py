"""Tiny random pretrained parts in the layout experiments/tiny_latent.py reads, written with
`transformers` / `diffusers` locally (no downloads): DIR/qwen2 (Qwen2ForCausalLM), DIR/siglip
(SiglipVisionModel), DIR/vae (AutoencoderKL). Needs the `hf` and `torch` extras.

    write_parts(DIR)                          # the default shapes
    write_parts(DIR, SHAPES["other"])         # tied embeddings, MHA, 16 latent channels, ...
    write_parts(DIR, SHAPES["qwen_tok"], tokenizer=True)   # + a Qwen-style qwen2/tokenizer.json
    write_qwen_tokenizer(DIR)                 # that tokenizer alone (needs only `tokenizers`)
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
# The default shapes with room for write_qwen_tokenizer's 470 + 22 ids, padded to 512 rows as
# Qwen2 pads its 151,665 to 151,936.
SHAPES["qwen_tok"] = dict(SHAPES["default"], qwen2=dict(SHAPES["default"]["qwen2"], vocab_size=512))

# Qwen2.5's added tokens, in its order (ids from the end of the BPE vocabulary); the tool-call
# and fill-in-the-middle ones are not flagged special there.
QWEN_ADDED = (
    [(t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                         "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                         "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                         "<|image_pad|>", "<|video_pad|>")]
    + [(t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                            "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")])
# Qwen2's pre-tokenizer split (its tokenizer.json), before the byte-level mapping.
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Text beyond the world's: capitals, digits, accents, CJK (the pieces a real corpus needs).
EXTRA_TEXT = ["Hello World! 2026-12-07: 42 red CIRCLES, 7 Blue Squares.",
              "Café, naïve, Über, señor, garçon, Øresund.", "你好，世界。日本語のテキスト。한국어 문장."]


def write_qwen_tokenizer(path: str, n_pieces: int = 470, delimiters: bool = True) -> str:
  """A byte-level BPE tokenizer built like Qwen2's (NFC, its split regex, ByteLevel pre-tokenizer
  and decoder; `n_pieces` BPE ids, then QWEN_ADDED) trained on the world's text and EXTRA_TEXT,
  with a Qwen2.5-style tokenizer_config.json: path/tokenizer.json + tokenizer_config.json.
  `delimiters=False` leaves out `<|vision_start|>` / `<|vision_end|>` (a bad-input case)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.sources import world  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(world.world_text_corpus(200)) + EXTRA_TEXT * 5, trainer)
  assert tok.get_vocab_size() == n_pieces, tok.get_vocab_size()
  added = [(t, sp) for t, sp in QWEN_ADDED
           if delimiters or t not in ("<|vision_start|>", "<|vision_end|>")]
  tok.add_tokens([tokenizers.AddedToken(t, special=sp, normalized=False) for t, sp in added])
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": None, "errors": "replace", "model_max_length": 32768,
               "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer"}, f)
  return path


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


def write_parts(path: str, shapes: dict | None = None, seed: int = 0,
                tokenizer: bool = False) -> str:
  """`tokenizer`: also qwen2/tokenizer.json (write_qwen_tokenizer; SHAPES["qwen_tok"] fits it)."""
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
  if tokenizer:
    write_qwen_tokenizer(os.path.join(path, "qwen2"))
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
