"""The joint attention's implementations: dense (the CPU reference), blockwise and flash.

`model.attention = "dense"`: the model builds the boolean L x L mask from the slot metadata
(masks.visibility) and runs jax.nn.dot_product_attention on it (layers.attention).

`model.attention = "blockwise"`: flash-style attention that never holds an L x L array. The
query and key slots are cut into blocks of `model.attention_block`; for every (query block, key
block) pair the mask is computed on the fly from the two blocks' metadata with the same rule
(masks.visibility), the scores go through an online softmax, and a pair that no row of the
batch can see is skipped (lax.cond) by a conservative test on per-block summaries of the
metadata: segment ranges, the (segment, T) order the "other" rule needs, image-id ranges for
the "same" rule, and which kinds occur (a text query block never reads a block of NVAE keys).
The backward pass is its own (custom_vjp, FlashAttention-2 style): it recomputes each visited
block's probabilities from the saved log-sum-exp, so what is kept between forward and backward
is O(L) per head (q, k, v, the output and the log-sum-exp) and the temporaries O(L * block).

The batch stays a vectorised dimension inside every block (so a batch-sharded mesh keeps its
sharding): a block pair is skipped when it is invisible in every row, the mask inside a visited
block is exact per row.

Differences from dense, by design: a query with no visible key (a padding slot) gets a zero
output here, where the dense path falls back to a uniform softmax over all keys. Nothing reads
padding slots and they carry no loss, so losses, real slots' outputs and all gradients agree
(tests/test_attention.py). GQA: query head n = kv head n // G, as in dot_product_attention.

`model.attention = "flash"`: the same algorithm as one fused Pallas kernel (model/flash.py,
which says why no library kernel fits our mask); its tile maps are tile_maps' `may` (per row,
since the kernel's grid has a program per row) and `full` (tiles that skip the mask). The
kernel is chosen by the platform the step is lowered for (flash_dispatch: Pallas Triton on
CUDA, Pallas interpret mode on CPU) and runs inside shard_map under a mesh. The ViT towers keep dense attention: they attend within one
image's patches ([B x images, grid**2], model/image_batch.py), not over packed slots.
The KV-cache sampling path (Mogao.decode) stays dense: its queries are the few new slots, its
mask [B, new, cache + new] is not L x L, and it carries the sampler's per-branch keep mask.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mogao_jax.data.batch import NUM_KINDS
from mogao_jax.model import flash, flash_tpu, layers, masks

_BIG = np.iinfo(np.int32).max
_META = ("segment", "kind", "image", "t")


def attend(q_BLHD, k_BLKD, v_BLKD, mask, cfg):
  """The model's attention: `mask` is a bool [B, Lq, Lk] array (dense) or a pair of metadata
  dicts (q_meta, k_meta) with 'segment', 'kind', 'image' [B, L] and 'pos' [B, L, 3]
  (blockwise or flash by cfg.attention: masks built per tile from the rule tables of cfg)."""
  if not hasattr(mask, "ndim"):  # a (q_meta, k_meta) pair, however lifting re-wrapped it
    q_meta, k_meta = mask
    fn = flash_attention if cfg.attention == "flash" else blockwise_attention
    return fn(q_BLHD, k_BLKD, v_BLKD, q_meta, k_meta,
              other=masks.parse_table(cfg.mask_other, "model.mask_other"),
              same=masks.parse_table(cfg.mask_same, "model.mask_same"),
              block_q=cfg.attention_block, block_k=cfg.attention_block)
  return layers.attention(q_BLHD, k_BLKD, v_BLKD, mask)


# --- block summaries and the block map ---------------------------------------------------------

def pad_meta(meta: dict, length: int) -> dict:
  """segment / kind / image / t [B, length]; padding slots have segment 0 (see nothing)."""
  out = {"segment": meta["segment"], "kind": meta["kind"], "image": meta["image"],
         "t": meta["pos"][..., 0]}
  pad = length - out["segment"].shape[1]
  return {f: jnp.pad(x.astype(jnp.int32), ((0, 0), (0, pad))) for f, x in out.items()}


def _summary(meta: dict, block: int) -> dict:
  """Per (row, block): segment range of real slots, T at the ends of the (segment, T) order,
  image-id range, kinds present."""
  b, l = meta["segment"].shape
  r = lambda x: x.reshape(b, l // block, block)  # noqa: E731
  seg, t, img, kind = r(meta["segment"]), r(meta["t"]), r(meta["image"]), r(meta["kind"])
  real = seg > 0
  seg_lo = jnp.where(real, seg, _BIG).min(-1)
  seg_hi = jnp.where(real, seg, 0).max(-1)
  has_img = real & (img != 0)
  return {
      "seg_lo": seg_lo, "seg_hi": seg_hi,
      "all_real": real.all(-1), "all_img": has_img.all(-1),
      "t_min": jnp.where(real, t, _BIG).min(-1), "t_max": jnp.where(real, t, -_BIG).max(-1),
      # the (segment, T)-smallest and -largest real slot: T within the extreme segment
      "t_lo": jnp.where(real & (seg == seg_lo[..., None]), t, _BIG).min(-1),
      "t_hi": jnp.where(real & (seg == seg_hi[..., None]), t, -_BIG).max(-1),
      "img_lo": jnp.where(has_img, img, _BIG).min(-1),
      "img_hi": jnp.where(has_img, img, -1).max(-1),
      "kinds": (real[..., None] & (kind[..., None] == jnp.arange(NUM_KINDS))).any(-2),
  }


def _kind_pairs(qs: dict, ks: dict, table) -> jnp.ndarray:
  """int [B, nq, nk]: present (query kind of block i, key kind of block j) pairs in `table`."""
  rows = jnp.einsum("bik,kl->bil", qs["kinds"].astype(jnp.int32), jnp.asarray(table, jnp.int32))
  return jnp.einsum("bil,bjl->bij", rows, ks["kinds"].astype(jnp.int32))


def tile_maps(q_meta: dict, k_meta: dict, other, same, block_q: int, block_k: int):
  """(may, full), bool [B, nq, nk] each, from one pass of block summaries (metadata padded).

  may: can some query of block i read some key of block j (conservative: a False is certain,
  a True may still hold no visible pair). full: is every query of block i certain to read
  every key of block j (a True is certain): both blocks real slots of one document, and either
  every key entity precedes every query entity (k.T < q.T: distinct images, the "other" rule)
  with every kind pair present allowed by it, or both blocks are slots of one image with every
  kind pair allowed by the "same" rule. The flash kernel skips the mask on full tiles."""
  qs, ks = _summary(q_meta, block_q), _summary(k_meta, block_k)
  q = {f: x[:, :, None] for f, x in qs.items() if f != "kinds"}
  k = {f: x[:, None, :] for f, x in ks.items() if f != "kinds"}
  # may: visible => same segment > 0 ...
  seg_overlap = (k["seg_lo"] <= q["seg_hi"]) & (q["seg_lo"] <= k["seg_hi"])
  # ... and either (other rule) k.T <= q.T in that segment, so (seg, T)_k <= (seg, T)_q ...
  lex = (k["seg_lo"] < q["seg_hi"]) | ((k["seg_lo"] == q["seg_hi"]) & (k["t_lo"] <= q["t_hi"]))
  # ... or (same rule) one image id in both blocks.
  img_overlap = (k["img_lo"] <= q["img_hi"]) & (q["img_lo"] <= k["img_hi"])
  may_kinds = lambda t: _kind_pairs(qs, ks, t) > 0  # noqa: E731  some present pair allowed
  may = seg_overlap & ((lex & may_kinds(other)) | (img_overlap & may_kinds(same)))
  # full: every present kind pair allowed (none forbidden), in one document ...
  all_kinds = lambda t: _kind_pairs(qs, ks, ~np.asarray(t)) == 0  # noqa: E731
  one_doc = (q["all_real"] & k["all_real"] & (q["seg_lo"] == q["seg_hi"])
             & (k["seg_lo"] == k["seg_hi"]) & (q["seg_lo"] == k["seg_lo"]))
  before = (k["t_max"] < q["t_min"]) & all_kinds(other)
  one_image = (q["all_img"] & k["all_img"] & (q["img_lo"] == q["img_hi"])
               & (k["img_lo"] == k["img_hi"]) & (q["img_lo"] == k["img_lo"]) & all_kinds(same))
  return may, one_doc & (before | one_image)


def block_map(q_meta: dict, k_meta: dict, other, same, block_q: int, block_k: int):
  """The `may` map of tile_maps, bool [B, nq, nk] (under jit the unused `full` is dropped)."""
  return tile_maps(q_meta, k_meta, other, same, block_q, block_k)[0]


def _pad_length(x, n: int):
  """[B, L, ...] -> [B, n, ...], zeros after L (padding slots: segment 0 in the metadata)."""
  return jnp.pad(x, ((0, 0), (0, n - x.shape[1])) + ((0, 0),) * (x.ndim - 2))


def flash_attention(q_BLHD, k_BLKD, v_BLKD, q_meta: dict, k_meta: dict, *, other, same,
                    block_q: int = 128, block_k: int = 128):
  """The fused Pallas kernel (model/flash.py) under the visibility rule of the metadata.

  Same arguments and result as blockwise_attention. The kernel is the one of the platform the
  computation is LOWERED for (flash_dispatch), so a dry run for a GPU from this CPU host
  compiles the Triton kernel. Under a mesh it runs inside shard_map over the batch and head
  axes: a Pallas kernel cannot be partitioned by XLA."""
  args = (q_BLHD, k_BLKD, v_BLKD, q_meta, k_meta)
  run = functools.partial(_flash_local, other=other, same=same, block_q=block_q,
                          block_k=block_k)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return run(*args)
  spec = lambda *names: jax.sharding.PartitionSpec(*nn.logical_to_mesh_axes(names))  # noqa
  rows = lambda m: jax.tree.map(lambda x: spec("batch", *[None] * (x.ndim - 1)), m)  # noqa
  heads, kv_heads = spec("batch", None, "heads", None), spec("batch", None, "kv_heads", None)
  return jax.shard_map(run, mesh=mesh,
                       in_specs=(heads, kv_heads, kv_heads, rows(q_meta), rows(k_meta)),
                       out_specs=heads, check_vma=False)(*args)


def _flash_local(q_BLHD, k_BLKD, v_BLKD, q_meta, k_meta, *, other, same, block_q, block_k):
  """flash_attention on one device's rows and heads: pad to the blocks, tile maps, kernel."""
  lq, d = q_BLHD.shape[1], q_BLHD.shape[3]
  lq_p = -(-lq // block_q) * block_q
  lk_p = -(-k_BLKD.shape[1] // block_k) * block_k
  qm, km = pad_meta(q_meta, lq_p), pad_meta(k_meta, lk_p)
  # Per row (not OR-ed over the batch): the kernel's grid has a program per row.
  vis, full = tile_maps(qm, km, other, same, block_q, block_k)
  stack = lambda m: jnp.stack([m[f] for f in _META], axis=1)  # noqa: E731  [B, 4, L]
  key = (np.asarray(other, bool).tobytes(), np.asarray(same, bool).tobytes(), block_q, block_k,
         float(1.0 / np.sqrt(d)))
  out = flash_dispatch(key, _pad_length(q_BLHD, lq_p), _pad_length(k_BLKD, lk_p),
                       _pad_length(v_BLKD, lk_p), stack(qm), stack(km), vis, full)
  return out[:, :lq]


def flash_dispatch(key: tuple, *args):
  """The flash kernel for the lowering platform: Pallas Triton on CUDA, the TPU kernel on TPU,
  Pallas interpret mode elsewhere (CPU: a reference). `key`: flash.make's arguments before
  `interpret`; `args`: the kernel's (q, k, v, qm, km, vis, full)."""
  return jax.lax.platform_dependent(
      *args, cuda=flash.make(*key, False, flash.BWD_BLOCK), tpu=flash_tpu.for_tpu(*key),
      default=flash.make(*key, True, flash.BWD_BLOCK))


# --- the blockwise kernel -----------------------------------------------------------------------

def _blocks(x, block):
  """[B, L, ...] -> [L / block, B, block, ...]."""
  b, l = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, l // block, block, *x.shape[2:]), 1, 0)


def _unblocks(x):
  """[n, B, block, ...] -> [B, n * block, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _visible(qm, km, other, same):
  """bool [B, bq, bk] for one block pair: exactly masks.visibility."""
  as_meta = lambda m: {"segment": m["segment"], "kind": m["kind"], "image": m["image"],  # noqa
                       "pos": m["t"][..., None]}
  return masks.visibility(as_meta(qm), as_meta(km), other, same)


def _forward(q, k, v, qm, km, bmap, *, other, same, block_q, block_k, scale):
  """Blocked inputs: q [nq, B, bq, K, G, D], k/v [nk, B, bk, K, D], metadata [n, B, b], bmap
  [nq, nk]. Returns out [nq, B, bq, K, G, D], lse [nq, B, K, G, bq] (+inf where a query sees
  nothing), visited block pairs (int)."""
  _, b, bq, kh, g, d = q.shape

  def q_step(visits, xs):
    qi, qmi, row = xs

    def k_step(carry, ys):
      kj, vj, kmj, vis = ys

      def compute(c):
        m, l, acc, n = c
        s = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
        s = jnp.where(_visible(qmi, kmj, other, same)[:, None, None], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_use = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
        p = jnp.exp(s - m_use[..., None])
        corr = jnp.exp(m - m_use)
        acc = acc * corr[..., None] + jnp.einsum(
            "bkgqs,bskd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
        return m_new, l * corr + p.sum(-1), acc, n + 1

      return jax.lax.cond(vis, compute, lambda c: c, carry), None

    init = (jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, d), jnp.float32), jnp.int32(0))
    (m, l, acc, n), _ = jax.lax.scan(k_step, init, (k, v, km, row))
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    out = jnp.einsum("bkgqd->bqkgd", acc / l_safe[..., None]).astype(q.dtype)
    lse = jnp.where(seen, m + jnp.log(l_safe), jnp.inf)
    return visits + n, (out, lse)

  visits, (out, lse) = jax.lax.scan(q_step, jnp.int32(0), (q, qm, bmap))
  return out, lse, visits


def _backward(q, k, v, qm, km, bmap, out, lse, dout, *, other, same, block_q, block_k, scale):
  """FlashAttention-2 backward over the visited block pairs: outer loop over key blocks
  (dk, dv of that block), inner over query blocks (dq accumulated in the outer carry)."""
  delta = jnp.einsum("nbqkgd,nbqkgd->nbkgq", dout.astype(jnp.float32),
                     out.astype(jnp.float32))

  def k_step(dq, xs):
    kj, vj, kmj, col = xs

    def q_step(carry, ys):
      qi, qmi, doi, lsei, di, vis = ys

      def compute(c):
        dk, dv = c
        s = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
        ok = _visible(qmi, kmj, other, same)[:, None, None]
        p = jnp.where(ok, jnp.exp(s - lsei[..., None]), 0.0)
        dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p, doi.astype(jnp.float32))
        dp = jnp.einsum("bqkgd,bskd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
        ds = p * (dp - di[..., None])
        dqi = jnp.einsum("bkgqs,bskd->bqkgd", ds, kj.astype(jnp.float32)) * scale
        dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, qi.astype(jnp.float32)) * scale
        return (dk, dv), dqi

      def skip(c):
        return c, jnp.zeros(qi.shape, jnp.float32)

      return jax.lax.cond(vis, compute, skip, carry)

    zero = jnp.zeros(kj.shape, jnp.float32)
    (dk, dv), dq_blocks = jax.lax.scan(q_step, (zero, zero), (q, qm, dout, lse, delta, col))
    return dq + dq_blocks, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(k_step, jnp.zeros(q.shape, jnp.float32), (k, v, km, bmap.T))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.lru_cache(maxsize=None)
def _kernel(other_bytes: bytes, same_bytes: bytes, block_q: int, block_k: int, scale: float):
  """The custom_vjp attention for one static setting (tables as bytes so they can key a
  cache: one function object per setting, so jit and scan see the same primitive)."""
  other = np.frombuffer(other_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  same = np.frombuffer(same_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  kw = dict(other=other, same=same, block_q=block_q, block_k=block_k, scale=scale)

  @jax.custom_vjp
  def kernel(q, k, v, qm, km, bmap):
    return _forward(q, k, v, qm, km, bmap, **kw)[0]

  def fwd(q, k, v, qm, km, bmap):
    out, lse, _ = _forward(q, k, v, qm, km, bmap, **kw)
    return out, (q, k, v, qm, km, bmap, out, lse)

  def bwd(res, dout):
    q, k, v, qm, km, bmap, out, lse = res
    dq, dk, dv = _backward(q, k, v, qm, km, bmap, out, lse, dout, **kw)
    return dq, dk, dv, None, None, None

  kernel.defvjp(fwd, bwd)
  return kernel, kw


def blockwise_attention(q_BLHD, k_BLKD, v_BLKD, q_meta: dict, k_meta: dict, *, other, same,
                        block_q: int = 128, block_k: int = 128, return_visits: bool = False):
  """GQA attention under the visibility rule of the metadata, block by block.

  q [B, Lq, H, D], k / v [B, Lk, K, D] with H a multiple of K; metadata dicts as in
  masks.visibility. Returns [B, Lq, H, D] (and, with return_visits, the number of block pairs
  the forward pass computed: a test hook; that call is not differentiable)."""
  b, lq, h, d = q_BLHD.shape
  lk, kh = k_BLKD.shape[1], k_BLKD.shape[2]
  lq_p, lk_p = -(-lq // block_q) * block_q, -(-lk // block_k) * block_k
  qm, km = pad_meta(q_meta, lq_p), pad_meta(k_meta, lk_p)
  bmap = block_map(qm, km, other, same, block_q, block_k).any(0)  # skip only if no row sees it
  pad = _pad_length
  q = _blocks(pad(q_BLHD, lq_p).reshape(b, lq_p, kh, h // kh, d), block_q)
  k, v = _blocks(pad(k_BLKD, lk_p), block_k), _blocks(pad(v_BLKD, lk_p), block_k)
  qmb = {f: _blocks(qm[f], block_q) for f in _META}
  kmb = {f: _blocks(km[f], block_k) for f in _META}
  kernel, kw = _kernel(np.asarray(other, bool).tobytes(), np.asarray(same, bool).tobytes(),
                       block_q, block_k, float(1.0 / np.sqrt(d)))
  if return_visits:
    out, _, visits = _forward(q, k, v, qmb, kmb, bmap, **kw)
  else:
    out = kernel(q, k, v, qmb, kmb, bmap)
  out = _unblocks(out).reshape(b, lq_p, h, d)[:, :lq]
  return (out, visits) if return_visits else out
