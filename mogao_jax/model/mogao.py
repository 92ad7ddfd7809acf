"""The Mogao model: packed batch in, text logits and flow velocities out.

    logits_BTV, velocity_BVC = Mogao(cfg).apply({"params": p}, inputs, vis_t_BV)

`inputs` holds the fields of mogao_jax.data.batch (vis_latent already noised on NVAE slots by
the train step or the sampler); vis_t_BV is each vision slot's diffusion time (1 on CVAE slots).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model import edit_skip as edit_skip_lib
from mogao_jax.model import image_batch, layers, masks, rope, siglip, transformer, vit
from mogao_jax.model.config import ModelConfig

T_EMBED_DIM = 256


class Mogao(nn.Module):
  cfg: ModelConfig

  @classmethod
  def from_config(cls, config) -> "Mogao":
    """The model of a run config (its ``model`` section): the one factory every path uses."""
    return cls(ModelConfig.from_config(config.model))

  def setup(self):
    c = self.cfg
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.width, dtype=c.compute_dtype, name="embed_tokens",
        embedding_init=nn.with_logical_partitioning(layers.embed_init(c), ("vocab", "embed")))
    self.vit = (siglip.SiglipImages(siglip.from_model_config(c), grid=c.vit_grid, name="vit")
                if c.vit == "siglip" else vit.TinyViT(c))
    self.connector = vit.Connector(c)
    self.vis_in = layers.dense(c.width, (None, "embed"), c, bias=True, bias_axes=("embed",))
    if c.edit_skip:  # model/edit_skip.py; zero-init and bias-free: adds nothing at the start
      self.edit_skip = layers.dense(c.width, (None, "embed"), c, zero=True)
    self.t_fc1 = layers.dense(c.width, (None, "embed"), c, bias=True, bias_axes=("embed",))
    self.t_fc2 = layers.dense(c.width, ("embed", "embed_out"), c, bias=True,
                              bias_axes=("embed_out",))
    # adaLN-single's shared projection; zero-init so training starts unmodulated.
    self.t_mod = layers.dense((transformer.N_MOD, c.width), ("embed", None, "embed_out"), c,
                              bias=True, bias_axes=(None, "embed_out"), zero=True)
    self.t_final = layers.dense((2, c.width), ("embed", None, "embed_out"), c, bias=True,
                                bias_axes=(None, "embed_out"), zero=True)
    self.stack = transformer.Stack(c)
    self.txt_norm = layers.rms_norm(c)
    self.vis_norm = layers.rms_norm(c)
    if not c.tie_embeddings:
      self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), c)
    self.vis_head = layers.dense(c.latent_dim, ("embed", None), c, bias=True, zero=True)
    self._other = masks.parse_table(c.mask_other, "model.mask_other")
    self._same = masks.parse_table(c.mask_same, "model.mask_same")

  def image_features(self, b, vit_images: int = 0):
    """The understanding encoder's output [B, L_txt, vit_width] on VIT slots (0 elsewhere):
    each image encoded on its own patches (model/vit.py). `vit_images`: the image capacity of
    a row, 0 = the config's (batch.vit_capacity); the sampler passes its own."""
    c = self.cfg
    k = vit_images or batch_lib.vit_capacity(b["txt_kind"].shape[1], c.vit_grid, c.vit_images)
    key_BL = image_batch.image_keys(b["txt_kind"], b["txt_image"], b["txt_pos"], (Kind.VIT,), k,
                                    c.vit_grid)
    (patch_INP, pos_IN3), valid_IN = image_batch.to_images(
        key_BL, (b["txt_patch"], b["txt_pos"]), k, c.vit_grid * c.vit_grid)
    patch_INP = nn.with_logical_constraint(patch_INP, ("batch", None, None))
    return image_batch.to_slots(self.vit(patch_INP, pos_IN3, valid_IN), key_BL)

  def embed_text_stream(self, b, vit_images: int = 0):
    tok = self.embed_tokens(b["txt_token"])
    feat = self.connector(self.image_features(b, vit_images))
    return jnp.where((b["txt_kind"] == Kind.VIT)[..., None], feat.astype(tok.dtype), tok)

  def time_condition(self, vis_t_BV):
    emb = layers.timestep_embedding(vis_t_BV, T_EMBED_DIM)
    return self.t_fc2(nn.silu(self.t_fc1(emb.astype(self.cfg.compute_dtype))))

  def conditioning(self, b, vis_t_BV, n_images: int | None):
    """The timestep conditioning of the vision slots, computed once per image copy and
    gathered to its slots: (cond, copy_BV) with cond [B, 2 n + 1, D] (the CVAE then NVAE
    copies of the row's first n images with vision copies, then one for every other slot) and
    copy_BV each slot's row of it (image_batch.copy_index). The timestep embedding, the
    adaLN-single projection and the final modulation are per-image values: computing them per
    slot cost ~18% of the vision pathway's FLOPs at `tiny` (RESULTS.md section 1).
    vis_t_BV must be one value per image copy (flow.apply_noise and the sampler give one t
    per image; 1 on clean copies). n_images None: per slot (cond [B, V, D], copy_BV None)."""
    if n_images is None:
      return nn.silu(self.time_condition(vis_t_BV)), None
    copy_BV = image_batch.copy_index(b["vis_kind"], b["vis_image"], b["vis_pos"], n_images)
    t_BE = image_batch.per_copy(vis_t_BV.astype(jnp.float32), copy_BV, 2 * n_images + 1)
    return nn.silu(self.time_condition(t_BE)), copy_BV

  @staticmethod
  def _to_slots(x_BE, copy_BV):
    """[B, E, ...] per-copy values -> [B, V, ...] per slot (copy_BV None: already per slot).
    A one-hot matmul, not a gather: E is small (2 x images + 1), and its backward is a dot, not
    a scatter-add over [B, V, 6, D] (on CPU the two measured the same: RESULTS.md section 11)."""
    if copy_BV is None:
      return x_BE
    one_hot = (copy_BV[..., None] == jnp.arange(x_BE.shape[1])).astype(x_BE.dtype)
    return jnp.einsum("bve,be...->bv...", one_hot, x_BE)

  def edit_source(self, b, n_images: int):
    """[B, V, C] the source image's clean latent on each NVAE slot (model/edit_skip.py)."""
    return edit_skip_lib.source_latents(b["vis_kind"], b["vis_image"], b["vis_pos"],
                                        b["vis_segment"], b["vis_latent"], n_images,
                                        self.cfg.vision_grid)

  def _embed(self, b, vis_t_BV, vit_images: int = 0, source_BVC=None):
    x_txt = nn.with_logical_constraint(self.embed_text_stream(b, vit_images),
                                       ("batch", "length", "embed"))
    x_vis = self.vis_in(b["vis_latent"].astype(self.cfg.compute_dtype))
    if self.cfg.edit_skip:
      x_vis = x_vis + self.edit_skip(source_BVC.astype(self.cfg.compute_dtype))
    if self.cfg.vis_pos_embed == "sincos":
      pos = b["vis_pos"]
      table = layers.sincos_2d(pos[..., 1], pos[..., 2], self.cfg.width)
      x_vis = x_vis + table.astype(x_vis.dtype)
    x_vis = nn.with_logical_constraint(x_vis, ("batch", "length", "embed"))
    return x_txt, x_vis

  def __call__(self, b, vis_t_BV):
    c = self.cfg
    n = batch_lib.vis_capacity(b["vis_kind"].shape[1], c.vision_grid, c.vis_images)
    x_txt, x_vis = self._embed(b, vis_t_BV, source_BVC=self.edit_source(b, n)
                               if c.edit_skip else None)
    cond_BED, copy_BV = self.conditioning(b, vis_t_BV, n)
    meta = masks.joint_metadata(b)
    if c.attention in ("blockwise", "flash"):  # the mask is built per tile inside attention
      mask = (meta, meta)
    else:
      mask = masks.visibility(meta, meta, self._other, self._same)
    angles_BLP = rope.rope_angles(meta["pos"], c.head_dim, c.rope_theta)
    mod_BV6D = self._to_slots(self.t_mod(cond_BED), copy_BV)
    x_txt, x_vis = self.stack(x_txt, x_vis, mask, angles_BLP, mod_BV6D)
    return self._heads(x_txt, x_vis, cond_BED, copy_BV, b["vis_latent"], vis_t_BV)

  def decode(self, b, vis_t_BV, cache_kv, mask_BLK, vit_images: int = 0):
    """Sampling: the new slots `b` read [cached keys ; themselves] under mask_BLK [B, L, C + L]
    (the caller builds it from slot metadata, masks.visibility plus any condition drop).

    Always dense attention (model.attention applies to training and prefill-free forward
    passes): the new slots are few, so mask_BLK is not L x L.
    cache_kv = (k, v), each [depth, B, C, num_kv_heads, head_dim], rotated. Returns
    (logits_BTV, velocity_BVC, new_kv) with new_kv the new slots' (k, v), [depth, B, L, ...].
    `vit_images`: the most images with VIT copies among the new slots of a row (0 = config).
    With model.edit_skip, b["vis_source"] [B, L_vis, C] is the NVAE slots' source latent (the
    sampler derives it over the row's clean images in the cache, sample/engine.py); without
    it, it is derived over the new slots alone, as the full forward does over a row.
    """
    c = self.cfg
    source_BVC = None
    if c.edit_skip:
      source_BVC = b.get("vis_source")
      if source_BVC is None:  # every image has a slot: the slot count bounds the images
        source_BVC = self.edit_source(b, b["vis_kind"].shape[1])
    x_txt, x_vis = self._embed(b, vis_t_BV, vit_images, source_BVC)
    # Per slot: the sampler's new slots are few and an exact per-image capacity for them
    # would need one entry per slot anyway (any slot may start an image).
    cond_BED, copy_BV = self.conditioning(b, vis_t_BV, None)
    pos = jnp.concatenate([b["txt_pos"], b["vis_pos"]], axis=1)
    angles_BLP = rope.rope_angles(pos, c.head_dim, c.rope_theta)
    mod_BV6D = self._to_slots(self.t_mod(cond_BED), copy_BV)
    x_txt, x_vis, new_kv = self.stack(x_txt, x_vis, mask_BLK, angles_BLP, mod_BV6D, cache_kv)
    return (*self._heads(x_txt, x_vis, cond_BED, copy_BV, b["vis_latent"], vis_t_BV), new_kv)

  def _heads(self, x_txt, x_vis, cond_BED, copy_BV, x_t_BVC, vis_t_BV):
    c = self.cfg
    h_txt = self.txt_norm(x_txt)
    logits_BTV = (self.embed_tokens.attend(h_txt) if c.tie_embeddings else self.lm_head(h_txt))
    fin = self._to_slots(self.t_final(cond_BED), copy_BV)
    h_vis = layers.modulate(self.vis_norm(x_vis), fin[:, :, 0], fin[:, :, 1])
    velocity_BVC = self.vis_head(h_vis)
    if c.predict == "x1":  # the head's output is the clean latent: turn it into the velocity
      one_minus_t = jnp.maximum(1.0 - vis_t_BV.astype(jnp.float32), 0.05)[..., None]
      velocity_BVC = (velocity_BVC.astype(jnp.float32) - x_t_BVC.astype(jnp.float32)) / one_minus_t
    return logits_BTV.astype(jnp.float32), velocity_BVC.astype(jnp.float32)


def _copy_dicts(tree):
  return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def copy_text_to_vision(params: dict) -> dict:
  """Initialises the vision pathway as a copy of the text pathway (BAGEL's choice).

  Works on boxed (nn.Partitioned) or plain trees: both pathways have identical structure.
  """
  params = _copy_dicts(params)
  for blk in params["stack"].values():
    blk["vis"] = _copy_dicts(blk["txt"])
  params["vis_norm"] = _copy_dicts(params["txt_norm"])
  return params
