"""The sampler: prefill, KV-cached text decoding and flow-matching image generation, batched.

A request is a script: a list of ops, run in order for each row of a batch of rows.

  documents.Text / documents.Image   fed as context (an image through both encoders)
  Gen()                              `<img>`, the image's NVAE slots integrated from noise by the
                                     Euler ODE (guided), then the image appended as clean
                                     VIT + CVAE slots, then `</img>`
  Decode(max_tokens, images)         sample text until EOS or max_tokens; on `<img>` generate an
                                     image (if `images`, else stop) and go on decoding

Rows run in lockstep phases (feed, generate, decode), each one jitted call over the whole batch
with per-row masks, so a batch shares a handful of compiled programs (static shapes: a fixed
cache capacity, slot counts rounded up to powers of two). Randomness is per row (a key from
the row's `uid`), so a row's result does not depend on its batch-mates.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mogao_jax.convert import vae as vae_convert
from mogao_jax.data import documents
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data import images as images_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model import codec as codec_lib
from mogao_jax.model import edit_skip as edit_skip_lib
from mogao_jax.model import masks
from mogao_jax.model.mogao import Mogao
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.sample import cache as cache_lib
from mogao_jax.sample import sampling
from mogao_jax.sample import slots as slots_lib
from mogao_jax.sample.sampling import SampleConfig

_TAG_TEXT, _TAG_IMAGE = 1, 2
_BRANCH_OFFSET = 1 << 20  # image-id offset that keeps the three CFG branches apart


@dataclasses.dataclass(frozen=True)
class Gen:
  """Generate an image here."""


@dataclasses.dataclass(frozen=True)
class Decode:
  max_tokens: int = 32
  images: bool = True  # on `<img>`: generate an image (True) or stop (False)


@dataclasses.dataclass(frozen=True)
class _GenBody:  # the image itself, once `<img>` is in the cache
  pass


@dataclasses.dataclass
class _Row:
  ops: list
  uid: int  # seeds the row's randomness with the sampler's seed
  state: slots_lib.RowState = dataclasses.field(default_factory=slots_lib.RowState)
  out: list = dataclasses.field(default_factory=list)  # (role, Text | Image), role prompt|gen
  n_tok: int = 0  # sampled tokens so far (their RNG counter)
  n_gen: int = 0  # generated images so far


def condition_keep(q_branch_L, key_kind_BK, n_cache: int):
  """Per-query key mask of the three CFG branches (query branch 0 none, 1 img, 2 img + txt).

  Cached keys: branch 2 keeps all, branch 1 only context images (VIT / CVAE), branch 0 none.
  New keys (the queries' own NVAE slots) are always kept; masks.visibility separates the
  branches by image id. Returns bool [B, L, C + L]."""
  is_img = (key_kind_BK == Kind.VIT) | (key_kind_BK == Kind.CVAE)
  br = q_branch_L[None, :, None]
  cached = (br == 2) | ((br == 1) & is_img[:, None, :])
  is_new = jnp.arange(key_kind_BK.shape[1]) >= n_cache
  return cached | is_new[None, None, :]


def capacity_for(config, max_tokens: int) -> int:
  """KV-cache slots per row: a training row (``data.l_txt + data.l_vis``: the longest context
  the model saw) plus ``max_tokens`` sampled tokens, rounded up to a multiple of 64."""
  n = config.data.l_txt + config.data.l_vis + max_tokens
  return -(-n // 64) * 64


class Sampler:
  """Sampling from Mogao params. `dims` comes from the model config; `image_size` and
  `patch_size` (the VIT patches) from config.data; images enter the vision stream and leave
  it through the run's image codec (model/codec.py: pixel patches, or the VAE of data.vae,
  which decodes every generated image). `Sampler.from_config` is how every caller builds one."""

  @classmethod
  def from_config(cls, config, params, tokenizer, *, max_tokens: int = 32, capacity: int = 0,
                  batch_size: int = 8, sc: SampleConfig = SampleConfig(),
                  seed: int = 0, placement=None) -> "Sampler":
    """The sampler of a run config; ``capacity`` 0 = ``capacity_for(config, max_tokens)``;
    ``placement`` (sample/load.py's, with params already on its mesh): run on that mesh."""
    return cls(Mogao.from_config(config), params, tokenizer=tokenizer,
               image_size=config.data.image_size, patch_size=config.data.patch_size,
               capacity=capacity or capacity_for(config, max_tokens), batch_size=batch_size,
               sc=sc, seed=seed, codec=vae_convert.codec_for(config), placement=placement)

  def __init__(self, model: Mogao, params, *, tokenizer, image_size: int, patch_size: int,
               capacity: int = 1024, batch_size: int = 8, sc: SampleConfig = SampleConfig(),
               seed: int = 0, codec=None, placement=None):
    self.model, self.params, self.tok, self.sc = model, params, tokenizer, sc
    self.placement = placement  # None: one device; else .mesh and .rules (sample/load.py)
    if placement is not None:
      split = rules_lib.batch_size_divisor(placement.mesh, placement.rules)
      if batch_size % split:
        raise ValueError(f"--batch_size={batch_size} rows do not split over the mesh's batch "
                         f"axes ({split} ways, mesh {dict(placement.mesh.shape)}): use a "
                         f"multiple of {split}")
    self.cfg = model.cfg
    self.image_size, self.patch_size = image_size, patch_size
    self.grid = images_lib.validate(np.zeros((image_size, image_size, 3), np.uint8), patch_size)
    self.codec = codec or codec_lib.PixelCodec(image_size, patch_size)
    if self.codec.latent_dim != self.cfg.latent_dim:
      raise ValueError(f"the image codec gives {self.codec.latent_dim}-wide latent patches but "
                       f"model.latent_dim={self.cfg.latent_dim}")
    self.n_latent = self.codec.grid[0] * self.codec.grid[1]
    self.capacity, self.batch_size, self.seed = capacity, batch_size, seed
    self.dims = (self.cfg.patch_dim, self.cfg.latent_dim)
    self._emittable = jnp.asarray(tokenizer_lib.emittable(tokenizer, self.cfg.vocab_size))
    self._other = masks.parse_table(self.cfg.mask_other, "model.mask_other")
    self._same = masks.parse_table(self.cfg.mask_same, "model.mask_same")
    self._extend = jax.jit(self._extend_impl)
    self._decode_step = jax.jit(self._decode_impl)
    self._gen = jax.jit(self._gen_impl)
    self.reset()

  def reset(self, batch_size: int | None = None):
    """An empty cache (and zero next-token logits) for a new batch of rows."""
    self.cache = cache_lib.empty(self.cfg, batch_size or self.batch_size, self.capacity)
    if self.placement is not None:
      self.cache = jax.device_put(self.cache, self._cache_shardings(self.cache))
    self.logits = jnp.zeros((self.cache.segment.shape[0], self.cfg.vocab_size), jnp.float32)

  def _cache_shardings(self, cache):
    return cache_lib.shardings(cache, self.placement.mesh, self.placement.rules)

  def on_mesh(self):
    """The context the jitted calls run in: the placement's mesh and logical rules (so the
    model's activation constraints act), or nothing on one device."""
    if self.placement is None:
      return contextlib.nullcontext()
    return rules_lib.activate(self.placement.mesh, self.placement.rules)

  # --- device side -------------------------------------------------------------------------

  def forward(self, params, cache, b, vis_t_BV, keep_BLK=None):
    """New slots `b` over [cache ; b]: (logits_BTV, velocity_BVC, new (k, v))."""
    q = masks.joint_metadata(b)
    k = {f: jnp.concatenate([getattr(cache, f), q[f]], axis=1) for f in cache_lib.META}
    mask = masks.visibility(q, k, self._other, self._same)
    if keep_BLK is not None:
      mask = mask & keep_BLK
    # Every fed image is a full grid x grid image: that many fit the new text slots.
    vit_images = max(1, b["txt_kind"].shape[1] // self.grid ** 2)
    return self.model.apply({"params": params}, b, vis_t_BV, (cache.k, cache.v), mask,
                            vit_images, method=Mogao.decode)

  def _write(self, cache, b, new_kv):
    meta = masks.joint_metadata(b)
    cache = cache.write(b["dest"], new_kv, meta)
    if self.placement is not None:  # the cache keeps its layout from call to call
      cache = jax.lax.with_sharding_constraint(cache, self._cache_shardings(cache))
    return cache

  def _extend_impl(self, params, cache, b, logits_BV):
    """Feeds clean slots into the cache; returns the next-token logits of rows with text."""
    vis_t = jnp.ones(b["vis_kind"].shape, jnp.float32)
    logits_BTV, _, new_kv = self.forward(params, cache, b, vis_t)
    last = jnp.take_along_axis(logits_BTV, b["last"][:, None, None], axis=1)[:, 0]
    logits_BV = jnp.where(b["has_txt"][:, None], last, logits_BV)
    return logits_BV, self._write(cache, b, new_kv)

  def _row_keys(self, tag: int, uid_B, count_B):
    """Per-row keys: a function of (seed, row uid, tag, counter) only, not of the batch."""
    base = jax.random.fold_in(jax.random.key(self.seed), tag)
    return jax.vmap(lambda u, n: jax.random.fold_in(jax.random.fold_in(base, u), n))(
        uid_B, count_B)

  def _decode_impl(self, params, cache, logits_BV, uid_B, count_B, b):
    """Samples one token per row and feeds it (inactive rows: b has segment 0 there)."""
    keys_B = self._row_keys(_TAG_TEXT, uid_B, count_B)
    tok_B = sampling.sample_tokens(keys_B, logits_BV, self.sc, self._emittable)
    b = {**b, "txt_token": tok_B[:, None]}
    logits_BV, cache = self._extend_impl(params, cache, b, logits_BV)
    return tok_B, logits_BV, cache

  def branch_velocities(self, params, cache, b, x_BNC, t):
    """Velocity of the NVAE slots of `b` at latent x, time t under each condition branch:
    [R, B, N, C], R = 3 (none, img, img + txt) when guided, else 1 (img + txt).

    The branches run as one forward pass: the NVAE slots repeated R times, each copy with its
    own image id (so the copies never see each other) and a per-query key mask dropping its
    branch's conditions."""
    n, reps = b["vis_kind"].shape[1], 3 if self.sc.guided else 1
    bb = {k: v for k, v in b.items() if k.startswith("txt_")}
    for f in ("segment", "kind", "pos"):
      bb[f"vis_{f}"] = jnp.concatenate([b[f"vis_{f}"]] * reps, axis=1)
    bb["vis_image"] = jnp.concatenate(
        [b["vis_image"] + r * _BRANCH_OFFSET for r in range(reps)], axis=1)
    bb["vis_latent"] = jnp.concatenate([x_BNC] * reps, axis=1)
    if "vis_source" in b:  # model.edit_skip; branch "none" reads no context image, so no
      src = b["vis_source"]  # source either (as image condition dropout trains it)
      bb["vis_source"] = jnp.concatenate(
          ([jnp.zeros_like(src)] if reps == 3 else []) + [src] * min(reps, 2), axis=1)
    keep = None
    if reps == 3:
      kinds = jnp.concatenate([cache.kind, masks.joint_metadata(bb)["kind"]], axis=1)
      keep = condition_keep(jnp.repeat(jnp.arange(3), n), kinds, cache.capacity)
    vis_t = jnp.full(bb["vis_kind"].shape, t, jnp.float32)
    v = self.forward(params, cache, bb, vis_t, keep)[1]
    return jnp.stack(jnp.split(v, reps, axis=1))

  def image_noise(self, uid_B, count_B, n: int):
    """The Gaussian noise [B, n, latent_dim] an image starts from: row uid's image number
    ``count`` (0, 1, ..) under the sampler's seed (another sampler, e.g. the PyTorch export's,
    takes it to reproduce this one's images)."""
    keys_B = self._row_keys(_TAG_IMAGE, jnp.asarray(uid_B), jnp.asarray(count_B))
    return jax.vmap(lambda k: jax.random.normal(k, (n, self.cfg.latent_dim)))(keys_B)

  def _gen_impl(self, params, cache, b, uid_B, count_B):
    """Integrates the NVAE slots of `b` from Gaussian noise to a clean latent [B, N, C]."""
    sc = self.sc
    x0 = self.image_noise(uid_B, count_B, b["vis_kind"].shape[1])

    def velocity(x, t):
      v = self.branch_velocities(params, cache, b, x, t)
      return sampling.guide(v[0], v[1], v[2], sc.g_img, sc.g_txt) if sc.guided else v[0]

    return sampling.integrate(velocity, x0, sc.steps, sc.shift)

  # --- host side ---------------------------------------------------------------------------

  def run(self, scripts: list[list], uids: list[int] | None = None) -> list[list]:
    """Runs every script; returns per script its document as [(role, Text | Image)], role
    'prompt' (fed) or 'gen' (sampled). `uids` (default 0, 1, ..) seed each row's randomness."""
    uids = list(range(len(scripts))) if uids is None else list(uids)
    out = []
    with self.on_mesh():
      for i in range(0, len(scripts), self.batch_size):
        out += self._run_batch(scripts[i:i + self.batch_size], uids[i:i + self.batch_size])
    return out

  def _run_batch(self, scripts, uids):
    rows = [_Row([self._bos(), *s], int(u)) for s, u in zip(scripts, uids)]
    rows += [None] * (self.batch_size - len(rows))
    self.reset()
    while True:
      self._feed(rows)
      heads = [r.ops[0] if r and r.ops else None for r in rows]
      if all(h is None for h in heads):
        break
      if any(isinstance(h, _GenBody) for h in heads):
        self._generate(rows, [isinstance(h, _GenBody) for h in heads])
      else:
        self._decode(rows, [isinstance(h, Decode) for h in heads])
    return [r.out for r in rows if r is not None]

  def _bos(self):
    return ("tokens", [self.tok.bos_id])

  def _feed(self, rows):
    """Feeds every row's leading context ops (text, images, tokens) in one call."""
    new = []
    for r in rows:
      s = slots_lib.Slots(r.state, self.patch_size) if r else None
      while r and r.ops and not isinstance(r.ops[0], (_GenBody, Decode)):
        op = r.ops.pop(0)
        if isinstance(op, documents.Text):
          s.tokens(self.tok.encode(op.text))
          r.out.append(("prompt", op))
        elif isinstance(op, documents.Image):
          s.tokens([self.tok.img_open_id]).image(op.pixels, self._latent(op.pixels))
          s.tokens([self.tok.img_close_id])
          r.out.append(("prompt", op))
        elif isinstance(op, Gen):
          s.tokens([self.tok.img_open_id])
          r.ops.insert(0, _GenBody())
        elif isinstance(op, tuple) and op[0] == "tokens":
          s.tokens(op[1])
        else:
          raise ValueError(f"unknown script op {op!r}: use Text, Image, Gen or Decode")
      new.append(s if s and s.n_txt() + s.n_vis() else None)
    if any(new):
      self._append(new)

  def _latent(self, pixels: np.ndarray):
    """A context image's latent patches and grid, by the codec (`Slots.image`)."""
    if pixels.shape[:2] != (self.image_size, self.image_size):
      raise ValueError(f"a prompt image of {pixels.shape[0]}x{pixels.shape[1]}: the sampler "
                       f"takes config.data.image_size={self.image_size} squares")
    return self.codec.encode(pixels[None])[0], self.codec.grid

  def _append(self, new):
    b = slots_lib.collate(new, self.dims, self.capacity)
    self.logits, self.cache = self._extend(self.params, self.cache, b, self.logits)
    slots_lib.advance(new)

  @staticmethod
  def _counters(rows, counter):
    """(uid, counter) int32 arrays of the rows (padding rows: 0, 0)."""
    return (np.array([r.uid if r else 0 for r in rows], np.int32),
            np.array([counter(r) if r else 0 for r in rows], np.int32))

  def gen_query(self, rows, active):
    """The NVAE slots of the next image of every active row, collated for `_gen`; with
    model.edit_skip also `vis_source`, their source latent by the training forward's rule
    (model/edit_skip.py) over the row's clean images so far."""
    q = [slots_lib.Slots(dataclasses.replace(r.state), self.patch_size)
         .noisy(self.codec.grid, self.cfg.latent_dim) if a else None
         for r, a in zip(rows, active)]
    b = slots_lib.collate(q, self.dims, self.capacity, n_txt=0, n_vis=self.n_latent)
    if self.cfg.edit_skip:
      h = slots_lib.with_clean_history(q, self.cfg.latent_dim)
      n_images = max(len(s.state.clean) + 1 for s in q if s)
      src = edit_skip_lib.source_latents(h["kind"], h["image"], h["pos"], h["segment"],
                                         h["latent"], n_images, max(self.codec.grid))
      b["vis_source"] = np.asarray(src)[:, :self.n_latent]
    return b

  def _generate(self, rows, active):
    """One image for every active row (the ODE runs over the whole batch, results are kept
    for active rows), then the clean image and `</img>` go into the cache."""
    b = self.gen_query(rows, active)
    latent = np.asarray(self._gen(self.params, self.cache, b,
                                  *self._counters(rows, lambda r: r.n_gen)))
    idx = [i for i, a in enumerate(active) if a]
    pixels = dict(zip(idx, self.codec.decode(latent[idx])))  # one batched decode
    new = []
    for i, (r, a) in enumerate(zip(rows, active)):
      if not a:
        new.append(None)
        continue
      r.ops.pop(0)
      r.n_gen += 1
      img = documents.Image(pixels[i], generate=True)
      r.out.append(("gen", img))
      # Back in as a prompt image would come (decoded pixels, encoded again), so a document
      # reads its own generated image exactly as it reads one given to it.
      new.append(slots_lib.Slots(r.state, self.patch_size)
                 .image(img.pixels, self._latent(img.pixels))
                 .tokens([self.tok.img_close_id]))
    self._append(new)

  def _decode(self, rows, active):
    """Samples tokens for the active rows until each hits EOS, `<img>` or its limit."""
    active, texts = list(active), [[] for _ in rows]
    budget = [r.ops[0].max_tokens if a else 0 for r, a in zip(rows, active)]
    while any(active):
      for i, r in enumerate(rows):  # token budget spent, or no room for one more token
        if active[i] and (budget[i] <= 0 or r.state.length >= self.capacity):
          active[i] = self._stop(r, texts[i], gen=False)
      step = [slots_lib.Slots(r.state, self.patch_size).tokens([0]) if a else None
              for r, a in zip(rows, active)]
      if not any(step):
        break
      b = slots_lib.collate(step, self.dims, self.capacity, n_txt=1, n_vis=0)
      tok, self.logits, self.cache = self._decode_step(
          self.params, self.cache, self.logits, *self._counters(rows, lambda r: r.n_tok), b)
      slots_lib.advance(step)
      tok = np.asarray(tok)
      for i, r in enumerate(rows):
        if not active[i]:
          continue
        r.n_tok, budget[i], t = r.n_tok + 1, budget[i] - 1, int(tok[i])
        if t == self.tok.img_open_id:
          room = r.state.length + self.grid ** 2 + self.n_latent + 1 <= self.capacity
          active[i] = self._stop(r, texts[i], r.ops[0].images and room, budget[i])
        elif t == self.tok.eos_id or budget[i] <= 0:
          if t != self.tok.eos_id:
            texts[i].append(t)
          active[i] = self._stop(r, texts[i], gen=False)
        else:
          texts[i].append(t)

  def _stop(self, r, ids, gen: bool, budget: int = 0) -> bool:
    """Ends a row's decode run: its text goes out; `gen` queues an image, then decoding of the
    remaining `budget` tokens."""
    special = (self.tok.bos_id, self.tok.eos_id, self.tok.img_open_id, self.tok.img_close_id)
    ids[:] = [i for i in ids if i not in special]
    if ids:
      r.out.append(("gen", documents.Text(self.tok.decode(ids))))
      ids.clear()
    op = r.ops.pop(0)
    if gen:
      r.ops[:0] = [_GenBody(), dataclasses.replace(op, max_tokens=budget)]
    return False
