"""A ~1B Mogao for one node of 8 GPUs (80 GiB each, e.g. H100): a Qwen2.5-0.5B-sized text
pathway, its mirror as the vision pathway, and a SigLIP-base-sized understanding tower.

  python -m mogao_jax.train --config experiments/mogao_1b_8gpu.py --workdir runs/mogao_1b
  launch/slurm_gpu.sh (one node) for the same under SLURM

Text pathway = Qwen2.5-0.5B (width 896, 24 layers, 14 heads / 2 kv heads of 64, MLP 4864,
vocab 151936, tied embeddings, qkv bias, rope_theta 1e6); understanding tower SigLIP-base/16 at
224 px (width 768, 12 layers, 12 heads, MLP 3072, a 14 x 14 grid); generation latents a
16-channel VAE patchified 2 x 2 (latent_dim 64): 256 px images give 16 x 16 = 256 slots.

Data: data.source stays the built-in world, whose "latents" are 48-channel pixel patches at
small sizes: this config is for the dry run, the memory estimate and the sharding goldens until
a VAE-latent source at these shapes exists (the TFDS sources are another issue).

Memory per GPU (`python -m mogao_jax.parallel.estimate experiments/mogao_1b_8gpu.py 8`,
analytic, see mogao_jax/parallel/estimate.py; parameters counted exactly from the model's
abstract init, activations by formula, +-30%):
  mesh {'data': 1, 'fsdp': 8, 'tensor': 1}: 0.95B parameters,
  118.5M per device, 0.01% replicated; 4 rows per device per microbatch
    state                  1.77 GiB
    gathered_weights       0.11 GiB
    saved_activations      6.75 GiB
    transient              3.11 GiB
    logits                 6.96 GiB
    vit_activations        1.77 GiB
    total                 20.46 GiB
Of 80 GiB: room to double the batch or drop grad_accum_steps to 1 (saved activations and
logits scale with rows per microbatch). The SigLIP tower shards under the same rules as the rest
(before its parameters had logical axes, 9.07% of the bytes were replicated: state 2.88 GiB)
and runs per image (model/vit.py; attending over all text slots it took 5.48 GiB, 24.18 in all).
"""

import pathlib

import ml_collections

from mogao_jax import config_args


def _tiny_cpu():
  return config_args.load_experiment(pathlib.Path(__file__).with_name("tiny_cpu.py"))


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = _tiny_cpu().get_config()
  c.data.update(dict(image_size=256, patch_size=16, vocab_size=151936, l_txt=1024, l_vis=1024,
                     batch_size=64))  # 64 rows x 2048 slots = 128K tokens per step
  c.model.update(dict(
      vocab_size=151936, width=896, depth=24, num_heads=14, num_kv_heads=2, head_dim=64,
      mlp_dim=4864, qkv_bias=True, qk_norm=False, rope_theta=1e6, tie_embeddings=True,
      norm_eps=1e-6, latent_dim=64, patch_dim=16 * 16 * 3,
      vit="siglip", vit_width=768, vit_depth=12, vit_heads=12, vit_mlp_dim=3072, vit_grid=14,
      vit_pos_grid=14, vit_norm_eps=1e-6,
      scan_layers=True, remat="dots", dtype="bfloat16", vision_init="copy_text",
      predict="velocity"))  # Mogao's head (the tiny world recipe predicts x1)
  c.optim.update(dict(lr=3e-4, warmup_steps=1000, min_lr_ratio=0.1, weight_decay=0.1,
                      b1=0.9, b2=0.95, clip_norm=1.0))
  # 2 microbatches of 4 rows per GPU: the same 64-row batch in half the activation memory.
  c.train.update(dict(steps=50_000, log_every=20, ckpt_every=1000, keep_checkpoints=3,
                      keep_every=10_000, grad_accum_steps=2))
  # FSDP over the node's 8 GPUs (NVLink): 14 heads / 2 kv heads leave no room for a tensor axis.
  c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  # mesh.rules: tiny_cpu's (batch over data x fsdp, embed over fsdp, heads/kv_heads/mlp/vocab
  # over tensor); the sharding goldens in tests/golden/ pin the result.
  # Everything is sharded (0.01% replicated: a few scalars); fail fast if a change replicates more.
  c.mesh.max_replicated_fraction = 0.02
  return c
