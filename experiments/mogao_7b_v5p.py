"""Mogao on a Qwen2.5-3B-sized backbone (~7B with the vision pathway) for a TPU v5p-256 slice
(128 chips, 95 GiB HBM each; one JAX device per chip).

  launch/tpu_pod.sh experiments/mogao_7b_v5p.py --workdir gs://BUCKET/runs/mogao_7b
  python -m mogao_jax.train --config experiments/mogao_7b_v5p.py --config.dry_run=True \\
      --config.dry_run_topology=v5p-256        # on a host with libtpu: XLA's own numbers

Text pathway = Qwen2.5-3B (width 2048, 36 layers, 16 heads / 2 kv heads of 128, MLP 11008,
vocab 151936, tied embeddings, qkv bias, rope_theta 1e6; init.text can load its weights); the
vision pathway mirrors its layers. Understanding encoder: a SigLIP-so400m-sized tower (width
1152, 27 layers, 16 heads, MLP 4304, 14-pixel patches at 384 px: a 27 x 27 grid; init.vit can
load it). Generation latents: a 16-channel VAE patchified 2 x 2 -> latent_dim 64; 512 px images
give 32 x 32 = 1024 vision slots, so l_vis = 2048 holds an edit pair (CVAE + NVAE).

Data: data.source stays the built-in world, whose "latents" are 48-channel pixel patches at
small sizes: this config is for the dry run, the memory estimate and the sharding goldens until
a VAE-latent source at these shapes exists (the TFDS sources are another issue).

Memory per chip (`python -m mogao_jax.parallel.estimate experiments/mogao_7b_v5p.py 128`,
analytic, see mogao_jax/parallel/estimate.py; parameters counted exactly from the model's
abstract init, activations by formula, +-30%):
  mesh {'data': 1, 'fsdp': 128, 'tensor': 1}: 6.32B parameters,
  49.8M per device, 0.01% replicated; 2 rows per device per microbatch
    state                  0.74 GiB
    gathered_weights       0.57 GiB
    saved_activations      1.12 GiB
    transient              7.10 GiB
    logits                 6.96 GiB
    vit_activations        9.12 GiB
    total                 25.61 GiB
Of 95 GiB. The SigLIP tower runs per image (model/vit.py): 2 images of 27 x 27 patches per
row (batch.vit_capacity of 2048 text slots), attention within each image; before, it attended
over all 2048 text slots ([16, 2048, 2048] float32 per layer and row): vit_activations 30.20
GiB, total 46.69 GiB. (Before its parameters had logical axes they were replicated: 6.54% of
the bytes, state 6.84 GiB per chip.)
"""

import pathlib

import ml_collections

from mogao_jax import config_args


def _tiny_cpu():
  return config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_cpu.py"))


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = _tiny_cpu().get_config()
  c.data.update(dict(image_size=512, patch_size=16, vocab_size=151936, l_txt=2048, l_vis=2048,
                     batch_size=256))  # 256 rows x 4096 slots = 1M tokens per step
  c.model.update(dict(
      vocab_size=151936, width=2048, depth=36, num_heads=16, num_kv_heads=2, head_dim=128,
      mlp_dim=11008, qkv_bias=True, qk_norm=False, rope_theta=1e6, tie_embeddings=True,
      norm_eps=1e-6, latent_dim=64, patch_dim=14 * 14 * 3,
      vit="siglip", vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp_dim=4304, vit_grid=27,
      vit_pos_grid=27, vit_norm_eps=1e-6,
      scan_layers=True, remat="full", dtype="bfloat16", vision_init="copy_text",
      predict="velocity"))  # Mogao's head (the tiny world recipe predicts x1)
  c.optim.update(dict(lr=1e-4, warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1,
                      b1=0.9, b2=0.95, clip_norm=1.0))
  c.train.update(dict(steps=100_000, log_every=20, ckpt_every=1000, keep_checkpoints=3,
                      keep_every=10_000, grad_accum_steps=1))
  # Full FSDP over the slice: 128-way sharded weights and Adam state. kv_heads = 2 caps the
  # tensor axis at 2; at 95 GiB per chip it is not needed, so tensor = 1 (set it to 2 and the
  # batch halves per chip-pair if the activations grow).
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  # mesh.rules: tiny_cpu's (batch over data x fsdp, embed over fsdp, heads/kv_heads/mlp/vocab
  # over tensor); the sharding goldens in tests/golden/ pin the result.
  # Everything is sharded (0.01% replicated: a few scalars); fail fast if a change replicates more.
  c.mesh.max_replicated_fraction = 0.02
  return c
