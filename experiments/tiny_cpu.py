"""The default experiment: a tiny two-pathway Mogao on the built-in world, trained on the CPU.

python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/demo
python -m mogao_jax.train --config experiments/tiny_cpu.py:size=micro,res=16 --workdir runs/m

Config arguments (after the ':', comma-separated key=value; the defaults give the default run):
  size   micro | tiny | small: model sizes (micro = the test suite's model; tiny = the default)
  res    image side in pixels (a multiple of the 4-pixel patch); the ViT position grid and
         the stream capacities follow it (l_vis = 3 images' patches: a 2-step story fits)
  batch  global rows per step
  attn   dense | blockwise | flash: model.attention (blockwise and flash never build the L x L
         mask; for long rows, e.g. res=64; flash is the Pallas kernel, interpret mode on CPU)
  textw  none | answers | outputs: data.text_loss_weights, the text loss by the role of the text
         (TEXT_WEIGHTS below; none = every text token weighs 1, the key left out)
  editskip  1: model.edit_skip (model/edit_skip.py: each noisy patch adds a zero-initialised
         projection of its edit source's clean latent at the same cell); 0 (default): the
         key is not set, the paper's model
"""

import ml_collections

from mogao_jax import config_args

# model.* per size; "tiny" is the default run's model.
SIZES = {
    "micro": dict(width=32, depth=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                  vit_width=32, vit_depth=1, vit_heads=2),
    # Two heads of 64: on the CPU the step's largest cost is the elementwise work on the
    # [B, H, L, L] attention scores, which scales with the heads (benchmarks/RESULTS.md
    # section 12): 0.90-0.94 s/step against 1.13 for four heads of 32, same width and FLOPs.
    "tiny": dict(width=128, depth=4, num_heads=2, num_kv_heads=1, head_dim=64, mlp_dim=384,
                 vit_width=64, vit_depth=2, vit_heads=2),
    "small": dict(width=256, depth=6, num_heads=8, num_kv_heads=4, head_dim=32, mlp_dim=768,
                  vit_width=128, vit_depth=2, vit_heads=4),
}

# data.text_loss_weights per textw (issue 34, "the loss on the tokens that teach"): role ->
# multiplier of its tokens' next-token loss (data/documents.py TEXT_ROLES; unnamed = 1).
# "answers": the text the evaluation scores (answers, captions, stories) fully, prompts and
# edit instructions (inputs the model is never asked to write) at 0.3, questions not at all;
# "outputs": only the scored text (prompts and instructions at 0 too).
TEXT_WEIGHTS = {
    "none": None,
    "answers": {"prompt": 0.3, "instruction": 0.3, "question": 0.0, "answer": 1.0,
                "caption": 1.0, "story": 1.0},
    "outputs": {"prompt": 0.0, "instruction": 0.0, "question": 0.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, size="tiny", res=32, batch=16, attn="dense", textw="none",
                               editskip=False)
  config_args.check_choice(args, "size", SIZES)
  config_args.check_choice(args, "attn", ("dense", "blockwise", "flash"))
  config_args.check_choice(args, "textw", TEXT_WEIGHTS)
  c = _base()
  _apply_args(c, args)
  return c


def _apply_args(c, args) -> None:
  """size / res / batch / attn / textw / editskip -> the keys they set (at the defaults:
  exactly the values of _base; textw=none and editskip=0 set nothing)."""
  c.model.update(SIZES[args.size])
  if args.res <= 0 or args.res % c.data.patch_size:
    raise ValueError(f"config argument res={args.res}: must be a positive multiple of the"
                     f" patch size {c.data.patch_size}")
  grid = args.res // c.data.patch_size
  c.data.image_size = args.res
  c.model.vit_grid = grid
  c.data.l_vis = 3 * grid * grid
  c.data.l_txt = max(96, c.data.l_vis)
  c.data.batch_size = args.batch
  c.model.attention = args.attn
  if TEXT_WEIGHTS[args.textw] is not None:
    c.data.text_loss_weights = ml_collections.ConfigDict(TEXT_WEIGHTS[args.textw])
  if args.editskip:
    c.model.edit_skip = True


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- data: the built-in world, pixel-space patches stand in for VAE latents.
  c.data = ml_collections.ConfigDict()
  c.data.source = "world"
  c.data.image_size = 32  # pixels, square
  c.data.patch_size = 4  # pixels per patch side, for the VIT and the pixel "latent" alike
  # Document kinds of the world (mogao_jax/data/sources/world/kinds.py). Understanding kinds
  # (caption, vqa) teach every attribute as words and fill the text stream; t2i, edit and
  # story train generation and fill the vision stream. Measured at 15 minutes (940 steps;
  # benchmarks/LEARNING.md, "15 minutes"): edit and story at 15% each, against 5% in the mix
  # before (t2i 0.45 / caption 0.2 / vqa 0.25 / edit 0.05 / story 0.05), lifted the partial
  # scores of stories 0.14 -> 0.43 and edits 0.14 -> 0.23 and kept GenEval (0.083 vs 0.067)
  # and VQA (0.558 vs 0.600) within the eval's noise.
  c.data.doc_weights = ml_collections.ConfigDict(
      {"t2i": 0.35, "caption": 0.15, "vqa": 0.2, "edit": 0.15, "story": 0.15})
  # t2i prompt categories: GenEval's six, plus "full" (every attribute stated, so generation
  # also learns sizes and absolute positions).
  c.data.t2i_weights = ml_collections.ConfigDict(
      {"single_object": 1.0, "two_object": 1.0, "counting": 1.0, "colors": 1.0,
       "position": 1.0, "color_attr": 1.0, "full": 2.0})
  # (min, max) steps of a story. A story of n images needs 2n - 1 vision slots of 64 at 32 px
  # (n NVAE + n - 1 CVAE copies), so 2 steps is the most that fits l_vis = 192.
  c.data.story_steps = (2, 2)
  # Condition dropout (data/transforms.py): the text before a generated image is dropped with
  # this probability, so sampling can use classifier-free guidance (evaluate --g_txt).
  c.data.cond_dropout = 0.1
  c.data.eval_seed = 0  # the held-out eval set (mogao_jax.eval.eval_prompts) depends only on it
  c.data.vocab_size = 256  # sentencepiece, trained from the world's text on first use
  # A trained tokenizer file (python -m mogao_jax.data.train_tokenizer); "" = the above.
  c.data.tokenizer = ""
  # The image codec (model/codec.py): "pixels" (pixel patches stand in for VAE latents),
  # "precomputed" (the VAE latent each image part carries: python -m mogao_jax.encode_latents)
  # or "encode" (the VAE of data.vae encodes each row's images in the train input step); with a
  # VAE, model.latent_dim = latent_channels * latent_patch ** 2 and samples are decoded by it.
  c.data.latents = "pixels"
  c.data.vae = ""  # a diffusers AutoencoderKL directory (needed by "encode" and for decoding)
  c.data.latent_patch = 2  # latent pixels per vision-slot side (VAE codecs only)
  c.data.latent_channels = 4  # the VAE's latent channels (VAE codecs; checked against data.vae)
  c.data.l_txt = 192  # text-stream slots per row (TXT + VIT)
  c.data.l_vis = 192  # vision-stream slots per row (CVAE + NVAE)
  c.data.batch_size = 16  # global rows per step
  c.data.shuffle_buffer = 256
  c.data.num_workers = 0  # Grain worker processes; 0 = in the main process
  c.data.read_threads = 2  # Grain threads making documents, split between the data shards
  # Data shards: independent streams, each a fixed block of rows of the global batch, so the
  # batches do not depend on the process count (0 = gcd(batch_size, 16); data/shards.py).
  c.data.num_shards = 0
  c.data.pack_open_rows = 4  # rows the two-stream first-fit packer keeps open at once

  # --- model: sizes of the text pathway; the vision pathway mirrors it.
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 256  # must be >= the tokenizer's vocabulary
  c.model.width = 128
  c.model.depth = 4
  c.model.num_heads = 2
  c.model.num_kv_heads = 1
  c.model.head_dim = 64
  c.model.mlp_dim = 384
  c.model.qkv_bias = True  # Qwen2 has q/k/v bias
  c.model.qk_norm = True
  c.model.rope_theta = 10_000.0
  # Untied: under a tied LM head the world's colour words collapsed onto one vector (pairwise
  # cosine 0.93 at step 500) and generation ignored them; untied, with N(0, 1) token embeddings
  # (layers.embed_init), t2i colour went 0.07 -> 0.38 (benchmarks/LEARNING.md, "The world's learning
  # curve").
  c.model.tie_embeddings = False
  c.model.norm_eps = 1e-6
  c.model.latent_dim = 48  # channels of one vision-stream slot: patch_size**2 * 3 in pixel space
  c.model.patch_dim = 48  # channels of one VIT patch: patch_size**2 * 3
  c.model.vit_width = 64
  c.model.vit_depth = 2
  c.model.vit_heads = 2
  c.model.vit_grid = 8  # max patches per image side, for the ViT's learned position table
  # Absolute 2-D position of vision-stream slots (fixed sin-cos added to their input, as BAGEL's
  # latent_pos_embed); "none" leaves IL-RoPE alone (not ablated on the world yet).
  c.model.vis_pos_embed = "sincos"
  # What the vision head predicts: velocity (Mogao's; the scale configs) | x1 (the clean latent,
  # turned into a velocity inside the model). x1 here: no early flow-loss plateau (0.36 vs 1.15
  # at step 50) and flat-coloured objects (benchmarks/LEARNING.md, "The world's learning curve").
  c.model.predict = "x1"
  c.model.vit = "tiny"  # tiny (from scratch) | siglip (model/siglip.py; weights via init.vit)
  c.model.vit_mlp_dim = 0  # siglip only: MLP width
  c.model.vit_pos_grid = 0  # siglip only: side of the pretrained position table (0 = vit_grid)
  c.model.vit_norm_eps = 1e-6  # siglip only
  # Images with VIT copies per row, the encoder's image batch (0 = l_txt // vit_grid**2, which
  # full-grid images never exceed); the packer keeps rows within it.
  c.model.vit_images = 0
  # Images with vision (CVAE / NVAE) copies per row: the timestep modulation is computed once
  # per image copy for that many (0 = l_vis // vit_grid**2); the packer keeps rows within it.
  c.model.vis_images = 0
  # Visibility rule table (MOGAO.md section 4); rows are query kinds TXT,VIT,CVAE,NVAE and
  # columns key kinds in the same order. "other": key in an earlier entity of the document
  # (earlier or equal T); "same": key in the same image. BAGEL's variant sets other TXT->CVAE.
  c.model.mask_other = "1100,1100,1110,1110"
  c.model.mask_same = "0000,0100,0110,0001"
  c.model.scan_layers = True
  c.model.remat = "none"  # none | full | dots
  # Joint attention: dense (builds the L x L mask; the CPU reference) | blockwise (flash-style,
  # per-block masks from the slot metadata, invisible blocks skipped; for long rows).
  c.model.attention = "dense"
  c.model.attention_block = 128  # slots per query / key block of the blockwise attention
  c.model.dtype = "float32"  # compute dtype; params stay float32
  c.model.vision_init = "copy_text"  # copy_text | scratch

  # --- pretrained parts (mogao_jax/convert/init.py): local HF directories; "" = random init.
  c.init = ml_collections.ConfigDict()
  c.init.text = ""  # Qwen2 dir -> text pathway (+ vision pathway when vision_init=copy_text)
  c.init.vit = ""  # SigLIP dir -> the understanding ViT (needs model.vit = "siglip")
  # Another run's workdir: its params (or EMA, params_key="ema") where name and shape match,
  # for fine-tuning from another config; a report lists the missing / unexpected / mis-shaped.
  c.init.params_from = ""
  c.init.params_key = "params"

  # --- flow matching (MOGAO.md section 6)
  c.flow = ml_collections.ConfigDict()
  c.flow.logit_mean = 0.0
  c.flow.logit_std = 1.0
  # Resolution shift towards noise (1 = none). 3, as the sampler's default time grid: the
  # layout of a scene is decided at low t, which logit-normal(0, 1) alone rarely samples.
  c.flow.shift = 3.0

  c.loss = ml_collections.ConfigDict()
  c.loss.text_weight = 1.0
  c.loss.image_weight = 1.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  # The quickstart's budget: 15 minutes on 2 CPU cores (0.97 s/step; ./launch/local.sh took
  # 15 min 46 s with start-up: benchmarks/LEARNING.md, "15 minutes"). Shape, the slowest of the
  # world's attributes, is learned between steps 1,500 and 3,000, so this run learns count,
  # colour, size and understanding first; the measured one-hour run is in the README.
  c.train.steps = 940
  c.train.log_every = 10
  c.train.ckpt_every = 100
  c.train.keep_checkpoints = 2  # the last N checkpoints (0 = all) ...
  c.train.keep_every = 0  # ... plus every K-th step for good (0 = none)
  c.train.async_checkpointing = True
  # A resume whose run keys (steps, batch, optim, data, seed...) differ from the checkpoint's
  # is refused unless this is True (each change then logged and kept in run_card.json).
  c.train.allow_config_change = False
  c.train.ema_decay = 0.0  # EMA of the weights, saved beside them (0 = off)
  c.train.sample_every = 0  # t2i sample grids to TensorBoard every N steps (0 = off)
  c.train.sample_n = 4  # prompts per grid
  c.train.sample_steps = 25  # ODE steps per sampled image
  c.train.eval_every = 0  # the world eval's scores to TensorBoard every N steps (0 = off)
  c.train.eval_n = 2  # held-out items per category
  c.train.eval_kinds = ("t2i", "vqa")  # eval/prompts.py categories scored
  c.train.max_nan_skips = 5  # consecutive non-finite steps (each skipped) that stop the run
  c.train.debug_nan_steps = ()  # test hook: steps whose batch is poisoned with NaN
  # Microbatches per step (lax.scan inside the step; one optimizer update, loss normalised
  # over the whole batch): data.batch_size must be a multiple of it x the batch devices.
  c.train.grad_accum_steps = 1
  c.train.offload_opt_state = False  # keep Adam state in pinned host memory between steps

  # --- parallelism: mesh axis sizes (-1 = the rest of the devices) and logical->mesh rules,
  # first match wins.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
      ("vocab", "tensor"),
  )
  c.dist = config_args.dist_config()  # multi-process: see launch/multiprocess_cpu.sh
  # Largest fraction of parameter bytes allowed fully replicated on a multi-device mesh (the
  # sharding report's fail-fast check); 1.0 = off, as pure data parallelism replicates all.
  c.mesh.max_replicated_fraction = 1.0
  c.dry_run = False  # compile the step for the mesh, report memory/FLOPs/sharding, no training
  c.dry_run_topology = ""  # e.g. "v5p-256" or "v5p:4x4x8": compile for that TPU (needs .[tpu])
  return c
