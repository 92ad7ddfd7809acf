"""The default experiment: a tiny two-pathway Mogao on the built-in world, trained on the CPU.

python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/demo
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- data: the built-in world, pixel-space patches stand in for VAE latents.
  c.data = ml_collections.ConfigDict()
  c.data.source = "world"
  c.data.image_size = 32  # pixels, square
  c.data.patch_size = 4  # pixels per patch side, for the VIT and the pixel "latent" alike
  c.data.doc_weights = ml_collections.ConfigDict({"t2i": 0.5, "caption": 0.3, "vqa": 0.2})
  c.data.vocab_size = 256  # sentencepiece, trained from the world's text on first use
  c.data.l_txt = 256  # text-stream slots per row (TXT + VIT)
  c.data.l_vis = 256  # vision-stream slots per row (CVAE + NVAE)
  c.data.batch_size = 16  # global rows per step
  c.data.shuffle_buffer = 256
  c.data.num_workers = 0  # Grain worker processes; 0 = in the main process

  # --- model: sizes of the text pathway; the vision pathway mirrors it.
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 256  # must be >= the tokenizer's vocabulary
  c.model.width = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 384
  c.model.qkv_bias = True  # Qwen2 has q/k/v bias
  c.model.qk_norm = True
  c.model.rope_theta = 10_000.0
  c.model.tie_embeddings = True
  c.model.norm_eps = 1e-6
  c.model.latent_dim = 48  # channels of one vision-stream slot: patch_size**2 * 3 in pixel space
  c.model.patch_dim = 48  # channels of one VIT patch: patch_size**2 * 3
  c.model.vit_width = 64
  c.model.vit_depth = 2
  c.model.vit_heads = 2
  c.model.vit_grid = 8  # max patches per image side, for the ViT's learned position table
  # Visibility rule table (MOGAO.md section 4); rows are query kinds TXT,VIT,CVAE,NVAE and
  # columns key kinds in the same order. "other": key in an earlier entity of the document
  # (earlier or equal T); "same": key in the same image. BAGEL's variant sets other TXT->CVAE.
  c.model.mask_other = "1100,1100,1110,1110"
  c.model.mask_same = "0000,0100,0110,0001"
  c.model.scan_layers = True
  c.model.remat = "none"  # none | full | dots
  c.model.dtype = "float32"  # compute dtype; params stay float32
  c.model.vision_init = "copy_text"  # copy_text | scratch

  # --- flow matching (MOGAO.md section 6)
  c.flow = ml_collections.ConfigDict()
  c.flow.logit_mean = 0.0
  c.flow.logit_std = 1.0
  c.flow.shift = 1.0  # resolution shift towards noise; 1 = none

  c.loss = ml_collections.ConfigDict()
  c.loss.text_weight = 1.0
  c.loss.image_weight = 1.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.log_every = 20
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 2

  # --- parallelism: mesh axis sizes (-1 = the rest of the devices) and logical->mesh rules,
  # first match wins.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("kv", "tensor"),
      ("mlp", "tensor"),
      ("vocab", "tensor"),
  )
  return c
