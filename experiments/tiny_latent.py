"""Mogao from pretrained parts, the real-format path end to end at any size: a Hugging Face
Qwen2 (the text pathway; the vision pathway starts as its copy), a SigLIP vision model (the
understanding tower) and a diffusers AutoencoderKL (the generation latents, encoded from each
row's images in the train input step and decoded for every sampled image).

  python -m mogao_jax.train --config experiments/tiny_latent.py:parts=DIR --workdir W \\
      --config.data.source='jsonl:/data/docs/*.jsonl?images=/data/images'

DIR holds qwen2/, siglip/ and vae/ (each config.json + *.safetensors). The tokenizer is the
Qwen2's own when qwen2/tokenizer.json is there (+ its tokenizer_config.json: eos / pad; the image
delimiters are `<|vision_start|>` / `<|vision_end|>`, see data/hf_tokenizer.py); else
DIR/tokenizer.model if present; else a sentencepiece tokenizer is trained from the built-in
world's text and the embedding is learned anew (data.tokenizer_relearn), which suits random
test parts only.
Every size comes from the parts' own config.json files (mogao_jax/part_configs.py); a missing
part or file is named at once. Config arguments:

  parts=DIR        the parts directory (required)
  res=0            image side in pixels; 0 = the SigLIP's own image_size. Must divide by the
                   SigLIP patch and by the VAE's downsampling x latent_patch
  latent_patch=2   latent pixels per vision-slot side (latent_dim = channels x latent_patch^2)
  batch=8          rows per step

tests/partskit.py writes tiny random parts of this layout (no downloads).
"""

import os
import pathlib

import ml_collections

from mogao_jax import config_args
from mogao_jax import part_configs

# Up to this many sentencepiece pieces when the parts hold no tokenizer.model (the world's
# text needs no more); never more than the Qwen2's vocabulary.
_WORLD_PIECES = 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, parts="", res=0, latent_patch=2, batch=8)
  if not args.parts:
    raise ValueError("experiments/tiny_latent.py needs its parts directory: "
                     "--config experiments/tiny_latent.py:parts=DIR (DIR/qwen2, DIR/siglip, "
                     "DIR/vae)")
  qwen, siglip, vae = part_configs.parts_dir(args.parts)
  c = config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_cpu.py")).get_config()
  text = part_configs.qwen2_keys(qwen)
  vit = part_configs.siglip_keys(siglip)
  sv, vk = part_configs.siglip_vision(siglip), part_configs.vae_keys(vae)
  c.model.update(text)
  c.model.update(vit)
  c.model.vision_init = "copy_text"
  c.model.predict = "velocity"
  c.init.text, c.init.vit = qwen, siglip

  patch = sv["patch_size"]
  res = args.res or sv["image_size"]
  step = vk["factor"] * args.latent_patch
  part_configs.check_image_size(res, patch, vk["factor"], args.latent_patch, siglip, vae)
  vit_grid, latent_grid = res // patch, res // step
  c.data.update(dict(image_size=res, patch_size=patch, latents="encode", vae=vae,
                     latent_patch=args.latent_patch, latent_channels=vk["latent_channels"],
                     batch_size=args.batch))
  c.model.latent_dim = vk["latent_channels"] * args.latent_patch ** 2
  c.model.vit_grid = vit_grid
  c.model.vis_grid = latent_grid  # capacities of the vision stream count latent grids
  c.data.l_vis = 3 * latent_grid * latent_grid  # an edit pair and a bit
  c.data.l_txt = max(96, 3 * vit_grid * vit_grid)
  sp_tok = os.path.join(args.parts, "tokenizer.model")
  if os.path.isfile(os.path.join(qwen, "tokenizer.json")):
    c.data.tokenizer, c.data.vocab_size = qwen, text["vocab_size"]
  elif os.path.isfile(sp_tok):
    c.data.tokenizer, c.data.vocab_size = sp_tok, text["vocab_size"]
  else:
    c.data.tokenizer, c.data.vocab_size = "", min(_WORLD_PIECES, text["vocab_size"])
    c.data.tokenizer_relearn = True
  c.train.update(dict(steps=200, log_every=10, ckpt_every=50))
  c.optim.warmup_steps = 20
  return c
