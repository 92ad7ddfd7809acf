"""The fused attention kernel (`model.attention = "flash"`): Pallas, forward and backward, with
the Mogao mask computed inside the kernel from per-slot metadata.

Why our own kernel (checked against jax 0.10.2, tokamax and the Pallas ops, 2026-12):
* `jax.nn.dot_product_attention` (XLA or cuDNN) takes causal / sliding-window / padding masks,
  or a dense mask or bias array: our rule table (bidirectional within an image, kind-dependent
  visibility, packed documents, T order between entities) is none of the first, and the dense
  array is the L x L we are here to avoid.
* `jax.experimental.pallas.ops.gpu.attention.mha` (Triton) takes causal + segment ids only.
* TPU Splash (`pallas.ops.tpu.splash_attention`) takes a static mask (one numpy or
  index-computable mask for every row) plus segment ids; ours depends on each row's kinds,
  image ids and T, so only its segment part fits. tokamax's attention exposes the same mask
  vocabulary (causal, sliding window, segment ids, a dense bias).
So the kernel is FlashAttention-2 in the style of the Pallas GPU `mha` (a program per
(row, query head, query block) looping over key blocks; backward as one dq and one dk/dv
kernel), with two departures: (1) the mask of a (query block, key block) tile is computed from
the two blocks' metadata (segment, kind, image id, T) by masks.visibility's rule, so no L x L
array exists anywhere; (2) each query block loops only over the key blocks its row can see, a
per-row list built from conservative block summaries (attention.tile_maps), and a tile the
summaries prove fully visible skips the mask (its `full` map). The rule tables are static: the
kernel is specialised to them.

GQA: query head h reads kv head h // G. dk / dv are produced per query head and summed over
each group outside the kernel (G x one layer's k / v in float32: simple, and small next to the
activations). A query that sees no key (padding) gets a zero output, as in the blockwise path.

Where it runs: attention.flash_dispatch picks the kernel by the platform the step is lowered
for. CUDA: compiled by Pallas Triton (chosen by compiler_params; blocks fitted to shared memory,
see make and BWD_BLOCK / TILE_BYTES; the metadata read by ref loads: Triton lowers no `slice`).
Elsewhere (CPU): Pallas interpret mode (the same kernel body evaluated by XLA: correctness only,
no speed). TPU: not this kernel (Mosaic needs (8, 128)-tiled VMEM blocks and this kernel reads a
whole row's keys per program); a Splash-style TPU kernel takes its place in the dispatch.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from mogao_jax.data.batch import NUM_KINDS

_META = ("segment", "kind", "image", "t")  # rows of the stacked metadata [B, 4, L]
# Block limits of the compiled kernels (shared memory; measured by compiling for an H100 and an
# A100 with ptxas, tests/test_flash_aot.py): the backward kernels' largest block (128 x 128
# bf16 at head_dim 128 needs 232,452 bytes of the H100's 232,448), and the forward's largest
# query / key tile in bytes (block x head_dim x itemsize: f32 at 128 x 128 needs 264,196).
BWD_BLOCK = 64
TILE_BYTES = 32768
# FLOPs per score and head dim of each kernel's matmuls (2 per multiply-add): forward Q K^T and
# P V; dq: Q K^T again, dO V^T, dS K; dk / dv: Q K^T, P^T dO, dO V^T, dS^T Q.
FLOPS_PER_SCORE = {"fwd": 4, "dq": 6, "dkv": 8}


def cost_estimate(kernel: str, b: int, h: int, lq: int, lk: int, d: int,
                  arrays) -> pl.CostEstimate:
  """The work a kernel declares to XLA (pl.CostEstimate; this GPU kernel's and flash_tpu's).

  It is the DENSE upper bound: every (query block, key block) tile of each row and query head
  visited. Not the visited tiles, because their per-row lists are computed from the batch's
  metadata at run time while a CostEstimate is static (ints at trace time); the visited share
  is about half on a causal row and less on packed documents. flops: FLOPS_PER_SCORE[kernel] x
  B x H x Lq x Lk x D (H query heads, lengths as padded to the blocks); transcendentals: one exp
  per score; bytes: each operand and result of the call (`arrays`) once, the k / v re-reads of
  each query block not counted. Mosaic (TPU) hands it to XLA's cost analysis
  (tests/test_flash_tpu_aot.py); jax 0.10.2's Pallas Triton lowering drops it (`del
  cost_estimate` in its pallas_call registration: the CUDA custom call carries no cost), so on
  a GPU it is the jaxpr's record only (tests/test_flash.py reads it there)."""
  scores = b * h * lq * lk
  nbytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in arrays)
  return pl.CostEstimate(flops=FLOPS_PER_SCORE[kernel] * scores * d, transcendentals=scores,
                         bytes_accessed=nbytes)


def _allowed(q_kind, k_kind, table):
  """bool [bq, bk]: table[q_kind, k_kind] as elementwise compares (no gather inside a
  kernel): one term per query kind whose row of the static table is not empty."""
  out = jnp.zeros((q_kind.shape[0], k_kind.shape[0]), bool)
  for a in range(NUM_KINDS):
    cols = [b for b in range(NUM_KINDS) if table[a, b]]
    if cols:
      k_ok = functools.reduce(jnp.logical_or, [k_kind == b for b in cols])
      out = out | ((q_kind == a)[:, None] & k_ok[None, :])
  return out


def visible(qm, km, other, same):
  """bool [bq, bk] from metadata rows qm = (segment, kind, image, T) [bq] each and km [bk]
  each: masks.visibility's rule. Rows come as separate loads because Pallas Triton lowers no
  `slice` of a loaded block (qm_block[0])."""
  qs, qi, qt = qm[0][:, None], qm[2][:, None], qm[3][:, None]
  ks, ki, kt = km[0][None, :], km[2][None, :], km[3][None, :]
  same_doc = (qs == ks) & (qs > 0)
  same_image = (qi == ki) & (qi > 0)
  rule_same = _allowed(qm[1], km[1], same)
  rule_other = _allowed(qm[1], km[1], other)
  return same_doc & jnp.where(same_image, rule_same, (kt <= qt) & rule_other)


def _rows(ref, cols):
  """The four metadata rows of a [4, L] ref at `cols`, one ref load each."""
  return tuple(ref[r, cols] for r in range(len(_META)))


def _scores(q, k, qm, km, full, scale, other, same):
  """Scaled f32 scores of one tile, -inf where invisible (the mask skipped on full tiles)."""
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32) * scale
  return jax.lax.cond(full, lambda: s,
                      lambda: jnp.where(visible(qm, km, other, same), s, -jnp.inf))


def _fwd_kernel(q_ref, k_ref, v_ref, qm_ref, km_ref, idx_ref, full_ref, cnt_ref, o_ref, lse_ref,
                *, block_k, scale, other, same):
  q, qm = q_ref[...], _rows(qm_ref, slice(None))
  bq, d = q.shape

  def body(t, carry):
    m, l, acc = carry
    j = idx_ref[t]
    ks = pl.ds(j * block_k, block_k)
    s = _scores(q, k_ref[ks, :], qm, _rows(km_ref, ks), full_ref[t] > 0, scale, other, same)
    m_new = jnp.maximum(m, s.max(-1))
    m_use = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # no visible key yet: keep p = 0
    p = jnp.exp(s - m_use[:, None])
    corr = jnp.exp(m - m_use)
    v = v_ref[ks, :]
    acc = acc * corr[:, None] + jax.lax.dot_general(
        p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc

  init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, d), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, cnt_ref[0], body, init)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, qm_ref, km_ref, idx_ref, full_ref, cnt_ref, do_ref, lse_ref,
               delta_ref, dq_ref, *, block_k, scale, other, same):
  q, qm, do = q_ref[...], _rows(qm_ref, slice(None)), do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]

  def body(t, dq):
    ks = pl.ds(idx_ref[t] * block_k, block_k)
    k, v = k_ref[ks, :], v_ref[ks, :]
    s = _scores(q, k, qm, _rows(km_ref, ks), full_ref[t] > 0, scale, other, same)
    p = jnp.exp(s - lse[:, None])
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + jax.lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32) * scale

  dq = jax.lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qm_ref, km_ref, idx_ref, full_ref, cnt_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, *, block_q, scale, other, same):
  k, v, km = k_ref[...], v_ref[...], _rows(km_ref, slice(None))

  def body(t, carry):
    dk, dv = carry
    qs = pl.ds(idx_ref[t] * block_q, block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    s = _scores(q, k, _rows(qm_ref, qs), km, full_ref[t] > 0, scale, other, same)
    p = jnp.exp(s - lse_ref[qs][:, None])  # lse = +inf on a query that sees nothing: p = 0
    dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[qs][:, None])
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32) * scale
    return dk, dv

  zero = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, cnt_ref[0], body, (zero, zero))
  dk_ref[...], dv_ref[...] = dk, dv


# --- pallas_call wiring ---------------------------------------------------------------------------

def _lists(vis_BIJ, full_BIJ):
  """Per (row, block i): the blocks j it visits, visible first ([B, I, J] int32), whether each
  listed tile is full ([B, I, J] int32) and how many to visit ([B, I, 1] int32)."""
  order = jnp.argsort(~vis_BIJ, axis=-1, stable=True).astype(jnp.int32)
  full = jnp.take_along_axis(full_BIJ, order, axis=-1).astype(jnp.int32)
  return order, full, vis_BIJ.sum(-1, keepdims=True).astype(jnp.int32)


def _query_grid_specs(block_q: int, lk: int, d: int, g: int, nk: int):
  """in_specs of a (row, query head, query block) grid, the forward's and dq's: the query
  block, the row's whole k and v (kv head h // g), their metadata, and the block's key lists."""
  sq = pl.squeezed
  return [pl.BlockSpec((sq, block_q, sq, d), lambda bi, hi, i: (bi, i, hi, 0)),
          *[pl.BlockSpec((sq, lk, sq, d), lambda bi, hi, i: (bi, 0, hi // g, 0))] * 2,
          pl.BlockSpec((sq, 4, block_q), lambda bi, hi, i: (bi, 0, i)),
          pl.BlockSpec((sq, 4, lk), lambda bi, hi, i: (bi, 0, 0)),
          *[pl.BlockSpec((sq, sq, nk), lambda bi, hi, i: (bi, i, 0))] * 2,
          pl.BlockSpec((sq, sq, 1), lambda bi, hi, i: (bi, i, 0))]


def _refine(x_BIJ, ri: int, rj: int):
  """A tile map at blocks (bq, bk) as a map at blocks (bq / ri, bk / rj): each tile's value
  for its sub-tiles (still conservative: a sub-tile of a skipped tile is invisible, of a full
  tile fully visible)."""
  return jnp.repeat(jnp.repeat(x_BIJ, ri, axis=1), rj, axis=2)


def _triton_params(d: int, interpret: bool):
  """Pallas Triton chosen explicitly (jax 0.10.2 otherwise lowers a GPU pallas_call with Mosaic
  GPU, which holds whole blocks in shared memory); warps as the Pallas GPU `mha`."""
  if interpret:
    return None
  return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _fit(block: int, row_bytes: int, cap: int) -> int:
  """The largest of block, block / 2, ... (down to 16) at most `cap` slots and TILE_BYTES."""
  while block % 2 == 0 and block > 16 and (block > cap or block * row_bytes > TILE_BYTES):
    block //= 2
  return block


@functools.lru_cache(maxsize=None)
def make(other_bytes: bytes, same_bytes: bytes, block_q: int, block_k: int, scale: float,
         interpret: bool, bwd_block: int = BWD_BLOCK):
  """The custom_vjp kernel for one static setting (tables as bytes so they key a cache).

  Call: kernel(q [B, Lq, H, D], k / v [B, Lk, K, D], qm [B, 4, Lq], km [B, 4, Lk],
  vis [B, nq, nk] bool, full [B, nq, nk] bool); lengths multiples of the blocks. The kernels
  run at blocks that divide (block_q, block_k) and fit shared memory (_fit: tiles of at most
  TILE_BYTES; the backward's two kernels, whose tiles hold more live arrays, at most
  `bwd_block` slots), on the maps refined to those blocks. The key lists
  of each query block and the query lists of each key block are built once per call (outside
  the custom_vjp, so the backward reuses them). `interpret`: Pallas interpret mode (any
  platform, a reference); else compiled by Pallas Triton (CUDA)."""
  other = np.frombuffer(other_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  same = np.frombuffer(same_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  rule = dict(scale=scale, other=other, same=same)
  sq = pl.squeezed

  def forward(blocks, q, k, v, qm, km, lists):
    bq_f, bk_f = blocks[:2]
    b, lq, h, d = q.shape
    lk, kh = k.shape[1], k.shape[2]
    g, nk = h // kh, lk // bk_f
    row_q = pl.BlockSpec((sq, bq_f, sq, d), lambda bi, hi, i: (bi, i, hi, 0))
    args = (q, k, v, qm, km, *lists)
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq), jnp.float32)]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, block_k=bk_f, **rule),
        grid=(b, h, lq // bq_f), in_specs=_query_grid_specs(bq_f, lk, d, g, nk),
        out_specs=[row_q, pl.BlockSpec((sq, sq, bq_f), lambda bi, hi, i: (bi, hi, i))],
        out_shape=out_shape, compiler_params=_triton_params(d, interpret),
        cost_estimate=cost_estimate("fwd", b, h, lq, lk, d, args + tuple(out_shape)),
        interpret=interpret, name="mogao_flash_fwd")(*args)

  def backward(blocks, q, k, v, qm, km, lists, lists_t, out, lse, do):
    bq_b, bk_b = blocks[2:]
    b, lq, h, d = q.shape
    lk, kh = k.shape[1], k.shape[2]
    g, nq, nk = h // kh, lq // bq_b, lk // bk_b
    params = _triton_params(d, interpret)
    delta = jnp.einsum("blhd,blhd->bhl", do.astype(jnp.float32), out.astype(jnp.float32))
    row_q = pl.BlockSpec((sq, bq_b, sq, d), lambda bi, hi, i: (bi, i, hi, 0))
    per_q = pl.BlockSpec((sq, sq, bq_b), lambda bi, hi, i: (bi, hi, i))
    args = (q, k, v, qm, km, *lists, do, lse, delta)
    dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, block_k=bk_b, **rule),
        grid=(b, h, nq), in_specs=_query_grid_specs(bq_b, lk, d, g, nk) + [row_q, per_q, per_q],
        out_specs=row_q, out_shape=dq_shape, compiler_params=params,
        cost_estimate=cost_estimate("dq", b, h, lq, lk, d, args + (dq_shape,)),
        interpret=interpret, name="mogao_flash_dq")(*args)
    # dk / dv: a program per (row, query head, key block) over the query blocks that see it.
    all_q = pl.BlockSpec((sq, lq, sq, d), lambda bi, hi, j: (bi, 0, hi, 0))
    blk_kv = pl.BlockSpec((sq, bk_b, sq, d), lambda bi, hi, j: (bi, j, hi // g, 0))
    blk_out = pl.BlockSpec((sq, bk_b, sq, d), lambda bi, hi, j: (bi, j, hi, 0))
    all_per_q = pl.BlockSpec((sq, sq, lq), lambda bi, hi, j: (bi, hi, 0))
    args = (q, k, v, qm, km, *lists_t, do, lse, delta)
    dkv_shape = [jax.ShapeDtypeStruct((b, lk, h, d), jnp.float32)] * 2  # per query head
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, block_q=bq_b, **rule),
        grid=(b, h, nk),
        in_specs=[all_q, blk_kv, blk_kv,
                  pl.BlockSpec((sq, 4, lq), lambda bi, hi, j: (bi, 0, 0)),
                  pl.BlockSpec((sq, 4, bk_b), lambda bi, hi, j: (bi, 0, j)),
                  pl.BlockSpec((sq, sq, nq), lambda bi, hi, j: (bi, j, 0)),
                  pl.BlockSpec((sq, sq, nq), lambda bi, hi, j: (bi, j, 0)),
                  pl.BlockSpec((sq, sq, 1), lambda bi, hi, j: (bi, j, 0)),
                  all_q, all_per_q, all_per_q],
        out_specs=[blk_out, blk_out], out_shape=dkv_shape, compiler_params=params,
        cost_estimate=cost_estimate("dkv", b, h, lq, lk, d, args + tuple(dkv_shape)),
        interpret=interpret, name="mogao_flash_dkv")(*args)
    group = lambda x: x.reshape(b, lk, kh, g, d).sum(3)  # noqa: E731  query heads -> kv head
    return dq, group(dk).astype(k.dtype), group(dv).astype(v.dtype)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def core(blocks, q, k, v, qm, km, lists, lists_b, lists_t):
    return forward(blocks, q, k, v, qm, km, lists)[0]

  def fwd(blocks, q, k, v, qm, km, lists, lists_b, lists_t):
    out, lse = forward(blocks, q, k, v, qm, km, lists)
    return out, (q, k, v, qm, km, lists_b, lists_t, out, lse)

  def bwd(blocks, res, do):
    dq, dk, dv = backward(blocks, *res, do)
    return dq, dk, dv, None, None, None, None, None

  core.defvjp(fwd, bwd)

  def kernel(q, k, v, qm, km, vis, full):
    row_bytes = q.shape[-1] * q.dtype.itemsize
    fq, fk = _fit(block_q, row_bytes, block_q), _fit(block_k, row_bytes, block_k)
    bq, bk = _fit(fq, row_bytes, bwd_block), _fit(fk, row_bytes, bwd_block)
    maps = lambda r, c: (_refine(vis, r, c), _refine(full, r, c))  # noqa: E731
    (vis_f, full_f), (vis_b, full_b) = maps(block_q // fq, block_k // fk), maps(
        block_q // bq, block_k // bk)
    return core((fq, fk, bq, bk), q, k, v, qm, km, _lists(vis_f, full_f),
                _lists(vis_b, full_b), _lists(vis_b.transpose(0, 2, 1), full_b.transpose(0, 2, 1)))

  return kernel
