"""The TPU kernel's bodies and packed block lists (the wiring and make(): model/flash_tpu.py).

Same call and result as model/flash.py's kernel (`make(...)` -> kernel(q [B, Lq, H, D],
k / v [B, Lk, K, D], qm [B, 4, Lq], km [B, 4, Lk], vis [B, nq, nk], full [B, nq, nk])), the
mask the same rule (flash.visible's, restated here on broadcastable fields: flash.visible
slices a stacked [4, b] block in one orientation), laid out for Mosaic in the structure of
jax's Splash attention:

* Grid over (row, head, query block, visit): the last axis walks the key blocks that the
  query block can see. Those per-row lists (and each listed tile's full / partial kind) reach
  the index maps as scalar-prefetch arrays in SMEM, bit-packed: key-block indices in 8 bits
  (16 past 256 blocks), full flags 1 bit, a count per query block (int32). Scalar memory is
  1 MiB on v5p; 8 rows x 32k slots x 128-blocks take 0.6 MiB here (4 MiB as int32 lists).
  A visit past the query block's count repeats the last listed block (so no new DMA) and
  computes nothing (pl.when), as Splash's data_next does.
* q, k, v go head-major ([B, H, L, D], transposed outside), so a block is (block, D): the last
  two dims (8, 128)-tileable. The metadata is [B, 8, L] int32 (fields in sublanes 0-3): a key
  block's field is a lane row [1, bk]; a query block's field becomes a column [bq, 1] by the
  same row -> column relayout Splash's dq kernel does on its log-sum-exp. 32 bytes per slot in
  HBM, where Splash's lane-broadcast (L, 128) layout would take 2 KiB per slot and field.
* Online softmax in VMEM scratch (m, l lane-replicated [bq, 128], the f32 accumulator [bq, D]),
  written out on the last visit. The log-sum-exp and delta travel as [B, H, 1, L] rows.
* Backward: a dq kernel on the forward's grid, and a dk / dv kernel on (row, kv head, key block,
  g x visited query block) that reduces GQA in the kernel: the g query heads sharing the kv
  head accumulate into one dk / dv scratch (no G x f32 copy outside). It works in the
  transposed orientation (scores [bk, bq], as Splash's dkv) so every matmul is NN or NT.
* A query that sees no key gets exactly zero output and zero gradients (lse = +inf).

The tile maps come from attention.tile_maps (conservative: a listed tile may hold no visible
pair; a `full` tile is certain to be all visible and skips the mask's compares). Tables are
static: the kernel is specialised to them. Work is declared with pl.CostEstimate as the upper
bound of every tile visited (the real count is data dependent).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mogao_jax.data.batch import NUM_KINDS

SMEM_BYTES = 1 << 20  # scalar memory per core (v5p's; the budget checked on every chip)
LANES = 128  # the lane width: m / l scratch is lane-replicated [bq, LANES]
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


# --- the packed per-row block lists (scalar prefetch) -------------------------------------------

def _bits(n_blocks: int) -> int:
  if n_blocks <= 256:
    return 8
  if n_blocks <= 1 << 16:
    return 16
  raise ValueError(f"flash_tpu: {n_blocks} blocks per row; at most 65536 (raise "
                   "model.attention_block)")


def _pack(x_BIJ, bits: int):
  """uint fields of `bits` bits, packed along the last axis into int32 words [B * I * W]."""
  b, i, j = x_BIJ.shape
  per = 32 // bits
  w = -(-j // per)
  x = jnp.pad(x_BIJ.astype(jnp.uint32), ((0, 0), (0, 0), (0, w * per - j)))
  shifts = jnp.arange(per, dtype=jnp.uint32) * bits
  words = (x.reshape(b, i, w, per) << shifts).sum(-1, dtype=jnp.uint32)  # disjoint bits: OR
  return jax.lax.bitcast_convert_type(words, jnp.int32).reshape(-1)


def pack_lists(vis_BIJ, full_BIJ):
  """Per (row, block i): the blocks j it visits (visible first, the rest repeating the last
  visible one), each listed tile's full flag, and the count. Returns (idx, full, cnt) int32
  flat arrays: idx packed by _bits(J), full 1 bit per entry, cnt one word per (row, i)."""
  _, _, nj = vis_BIJ.shape
  order = jnp.argsort(~vis_BIJ, axis=-1, stable=True).astype(jnp.int32)
  cnt = vis_BIJ.sum(-1).astype(jnp.int32)
  last = jnp.take_along_axis(order, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
  listed = jnp.arange(nj) < cnt[..., None]
  idx = jnp.where(listed, order, last)
  full = jnp.take_along_axis(full_BIJ, order, axis=-1) & listed
  return _pack(idx, _bits(nj)), _pack(full, 1), cnt.reshape(-1)


def _entry(ref, row, t, n_entries: int, bits: int):
  """Entry t of packed row `row` (scalar code: index maps and kernel bodies)."""
  per = 32 // bits
  width = -(-n_entries // per)
  word = ref[row * width + t // per]
  return jax.lax.shift_right_logical(word, (t % per) * bits) & ((1 << bits) - 1)


def smem_bytes(b: int, ni: int, nj: int) -> int:
  """Scalar-prefetch bytes of one kernel's lists (idx, full, cnt) for [b, ni, nj] maps."""
  per = 32 // _bits(nj)
  return 4 * b * ni * (-(-nj // per) + -(-nj // 32) + 1)


# --- the mask ------------------------------------------------------------------------------------

def _allowed(q_kind, k_kind, table):
  """bool tile: table[q_kind, k_kind] by elementwise compares (no gather in a kernel); q_kind
  and k_kind broadcast against each other ([n, 1] and [1, m] in either orientation)."""
  out = None
  for a in range(NUM_KINDS):
    cols = [c for c in range(NUM_KINDS) if table[a, c]]
    if cols:
      k_ok = functools.reduce(jnp.logical_or, [k_kind == c for c in cols])
      term = (q_kind == a) & k_ok
      out = term if out is None else out | term
  return jnp.zeros(jnp.broadcast_shapes(q_kind.shape, k_kind.shape), bool) if out is None else out


def visible_parts(qs, qk, qi, qt, ks, kk, ki, kt, other, same):
  """masks.visibility's rule on broadcastable fields (segment, kind, image, T) of queries and
  keys: same document, then the "same" table within one image, else T order + "other"."""
  same_doc = (qs == ks) & (qs > 0)
  same_image = (qi == ki) & (qi > 0)
  # logical ops, not a where on booleans (Mosaic has no layout for that i1 -> i8 select)
  return same_doc & ((same_image & _allowed(qk, kk, same))
                     | (~same_image & (kt <= qt) & _allowed(qk, kk, other)))


# --- kernel bodies --------------------------------------------------------------------------------

def _fields(m_ref, as_column: bool):
  """The 4 metadata fields of a [8, n] block: columns [n, 1] or rows [1, n]."""
  if as_column:
    return [jnp.expand_dims(m_ref[f], -1) for f in range(4)]
  return [m_ref[f:f + 1, :] for f in range(4)]


def _masked(s, q_fields, k_fields, full, other, same):
  """The scores with -inf where invisible (flash's rule); a full tile skips the mask's
  compares (VPU work comparable to the tile's matmul), as Splash skips its mask blocks."""
  return jax.lax.cond(full > 0, lambda: s,
                      lambda: jnp.where(visible_parts(*q_fields, *k_fields, other, same),
                                        s, -jnp.inf))


def _fwd_kernel(idx_ref, full_ref, cnt_ref, q_ref, k_ref, v_ref, qm_ref, km_ref, o_ref, lse_ref,
                m_sc, l_sc, acc_sc, *, nq, nk, scale, other, same):
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  row = b * nq + i

  @pl.when(t == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(t < cnt_ref[row])
  def _run():
    s = jax.lax.dot_general(q_ref[...], k_ref[...], _NT,
                            preferred_element_type=jnp.float32) * scale
    full = _entry(full_ref, row, t, nk, 1)
    s = _masked(s, _fields(qm_ref, True), _fields(km_ref, False), full, other, same)
    m_prev = m_sc[:, :1]
    m_next = jnp.maximum(m_prev, s.max(-1, keepdims=True))
    m_use = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # nothing visible yet: keep p = 0
    p = jnp.exp(s - m_use)
    alpha = jnp.exp(m_prev - m_use)
    l_next = alpha * l_sc[:, :1] + p.sum(-1, keepdims=True)
    m_sc[...] = jnp.broadcast_to(m_next, m_sc.shape)
    l_sc[...] = jnp.broadcast_to(l_next, l_sc.shape)
    v = v_ref[...]
    acc_sc[...] = alpha * acc_sc[...] + jax.lax.dot_general(
        p.astype(v.dtype), v, _NN, preferred_element_type=jnp.float32)

  @pl.when(t == nk - 1)
  def _end():
    l, m = l_sc[...], m_sc[...]
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc_sc[...] / l_safe[:, :1]).astype(o_ref.dtype)
    lse = jnp.where(seen, m + jnp.log(l_safe), jnp.inf)  # [bq, 128], lanes equal
    lse_ref[...] = lse.T[:1, :]  # the row [1, bq]


def _dq_kernel(idx_ref, full_ref, cnt_ref, q_ref, k_ref, v_ref, qm_ref, km_ref, do_ref, lse_ref,
               delta_ref, dq_ref, dq_sc, *, nq, nk, scale, other, same):
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  row = b * nq + i

  @pl.when(t == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  @pl.when(t < cnt_ref[row])
  def _run():
    k, v, do = k_ref[...], v_ref[...], do_ref[...]
    s = jax.lax.dot_general(q_ref[...], k, _NT, preferred_element_type=jnp.float32) * scale
    full = _entry(full_ref, row, t, nk, 1)
    s = _masked(s, _fields(qm_ref, True), _fields(km_ref, False), full, other, same)
    p = jnp.exp(s - jnp.expand_dims(lse_ref[0], -1))  # lse = +inf on a blind query: p = 0
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - jnp.expand_dims(delta_ref[0], -1))
    dq_sc[...] += jax.lax.dot_general(ds.astype(k.dtype), k, _NN,
                                      preferred_element_type=jnp.float32) * scale

  @pl.when(t == nk - 1)
  def _end():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_kernel(idx_ref, full_ref, cnt_ref, q_ref, k_ref, v_ref, qm_ref, km_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, nq, nk, g, scale, other, same):
  """Transposed orientation: scores [bk, bq]; step u = (query head in group) * nq + visit."""
  b, j, u = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  row, t = b * nk + j, u % nq

  @pl.when(u == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when(t < cnt_ref[row])
  def _run():
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = jax.lax.dot_general(k, q, _NT, preferred_element_type=jnp.float32) * scale  # [bk, bq]
    full = _entry(full_ref, row, t, nq, 1)
    s = _masked(s, _fields(qm_ref, False), _fields(km_ref, True), full, other, same)
    p = jnp.exp(s - lse_ref[...])  # lse row [1, bq]
    dv_sc[...] += jax.lax.dot_general(p.astype(do.dtype), do, _NN,
                                      preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(v, do, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[...])
    dk_sc[...] += jax.lax.dot_general(ds.astype(q.dtype), q, _NN,
                                      preferred_element_type=jnp.float32) * scale

  @pl.when(u == g * nq - 1)
  def _end():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


