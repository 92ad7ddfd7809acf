"""Mogao fine-tuned from real-size pretrained parts: a Qwen2/2.5 LM, a SigLIP tower and a
diffusers AutoencoderKL (e.g. Qwen2.5-7B + SigLIP-so400m-patch14-384 + a 16-channel FLUX VAE),
sized to fit the target's memory.

  python -m mogao_jax.train --workdir W \\
      --config experiments/mogao_from_parts.py:parts=DIR,target=h100:8 \\
      --config.data.source='jsonl:/data/docs/*.jsonl?images=/data/images'
  ...  --config.dry_run=True                                  # compile only: memory per device
  ...  target=v5p-256 --config.dry_run=True --config.dry_run_topology=v5p-256   # with libtpu

Everything experiments/tiny_latent.py does (sizes from the parts' config.json files, latents
encoded by the frozen VAE in the input step, capacities from the latent grid), plus what makes
real sizes fit and fine-tune:

* bf16 compute (params and Adam state stay float32), remat "full" (one layer's input saved
  per layer), blockwise attention (no L x L mask or probabilities: O(L x block) temporaries).
  On GPU / TPU the fused kernel (model.attention="flash") is the faster choice once it compiles
  there; blockwise is memory-safe and runs everywhere today.
* FSDP over every device of the target (mesh fsdp = -1), one row per device per microbatch.
* A fine-tuning schedule: optim.lr 2e-5 with warm-up (a pretrained LM, not the from-scratch
  2e-3), cosine to 10%; per-part multipliers (optim.lr_scale, train/optimizer.py PARTS), as
  BAGEL / LLaVA-style recipes: the LM ("text") at 2e-5, the vision pathway ("vision": Mogao's
  new generation weights, started as a copy of the LM's) at 5x, the connector at 10x, the
  SigLIP tower ("vit") frozen unless vit_lr > 0 (LLaVA-NeXT trains it at 1/10 of the LM).
  The VAE is always frozen (it is not in the train state at all).
* mesh.device_memory_gib from the target: the start-up check (parallel/estimate.py) stops a
  run whose estimate exceeds it, naming the keys to change.

Config arguments:

  parts=DIR        the parts directory (required): DIR/qwen2, DIR/siglip, DIR/vae
  target=h100:8    h100:N | h200:N | a100:N | v5p-N | v5e-N | v6e-N (a slice name)
  res=0            image side; 0 = the valid side nearest the SigLIP's own image_size
                   (a multiple of lcm(SigLIP patch, VAE factor x latent_patch): 448 for
                   so400m-patch14-384 with a 16 x 2 latent patch)
  latent_patch=2   latent pixels per vision-slot side
  text=1024        text tokens per row besides the images' VIT patches
  rows=1           rows per device per step (data.batch_size = rows x devices)
  vit_lr=0.0       SigLIP's lr multiplier (0 = frozen)
  steps=20000
"""

import pathlib

import ml_collections

from mogao_jax import config_args
from mogao_jax import part_configs

# Devices and memory per device (GiB) of each target, from the data sheets; one JAX device per
# chip. Slice names count TensorCores on v4 / v5p (2 per chip), chips elsewhere
# (train/dry_run.py topology_name does the same for the compile).
_GPU_GIB = {"h100": 80.0, "h200": 141.0, "a100": 80.0}
_TPU = {"v5p": (2, 95.0), "v4": (2, 32.0), "v5e": (1, 16.0), "v6e": (1, 32.0)}


def target_devices(target: str) -> tuple[int, float]:
  """(devices, GiB per device) of a target name; ValueError naming the argument."""
  kind, sep, n = target.replace("-", ":").partition(":")
  if sep and n.isdigit() and int(n) > 0:
    if kind in _GPU_GIB:
      return int(n), _GPU_GIB[kind]
    if kind in _TPU and int(n) % _TPU[kind][0] == 0:
      return int(n) // _TPU[kind][0], _TPU[kind][1]
  raise ValueError(f"config argument target={target!r}: want h100:N, h200:N, a100:N or a TPU "
                   "slice name (v5p-256, v5e-16, v6e-8, v4-32)")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, parts="", target="h100:8", res=0, latent_patch=2,
                               text=1024, rows=1, vit_lr=0.0, steps=20_000)
  if not args.parts:
    raise ValueError("experiments/mogao_from_parts.py needs its parts directory: "
                     "--config experiments/mogao_from_parts.py:parts=DIR,target=h100:8")
  devices, gib = target_devices(args.target)
  _, siglip, vae = part_configs.parts_dir(args.parts)
  sv, vk = part_configs.siglip_vision(siglip), part_configs.vae_keys(vae)
  res = args.res or min(
      part_configs.valid_image_sizes(sv["image_size"], sv["patch_size"], vk["factor"],
                                     args.latent_patch),
      key=lambda s: (abs(s - sv["image_size"]), s))
  tiny_latent = config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_latent.py"))
  c = tiny_latent.get_config(config_args.join_arg(dict(
      parts=args.parts, res=res, latent_patch=args.latent_patch, batch=args.rows * devices)))

  m = c.model
  m.update(dict(dtype="bfloat16", remat="full", attention="blockwise", attention_block=512))
  # Two images' VIT patches and `text` tokens of text per row; the vision stream holds an edit
  # pair and a bit (tiny_latent: 3 latent grids). The SigLIP tower's image batch is the
  # row's capacity of VIT images: 2 (its activations are not rematted: parallel/estimate.py).
  c.data.l_txt = 2 * m.vit_grid ** 2 + args.text
  m.vit_images = 2
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.max_replicated_fraction = 0.02
  c.mesh.device_memory_gib = gib

  c.optim.update(dict(lr=2e-5, warmup_steps=min(500, args.steps // 10), min_lr_ratio=0.1,
                      weight_decay=0.05, b1=0.9, b2=0.95, clip_norm=1.0))
  c.optim.lr_scale = ml_collections.ConfigDict(
      {"text": 1.0, "vision": 5.0, "connector": 10.0, "vit": args.vit_lr})
  c.train.update(dict(steps=args.steps, log_every=20, ckpt_every=1000, keep_checkpoints=3,
                      keep_every=10_000, ema_decay=0.0))
  return c
