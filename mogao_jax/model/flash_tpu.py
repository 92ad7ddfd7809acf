"""The fused attention kernel for TPU (Pallas Mosaic): `make(...)`, the pallas_call wiring.

Same call and result as model/flash.py's `make(...)` kernel; the design (Splash's structure:
grid over (row, head, query block, visit), packed scalar-prefetch block lists, (8, 128)-tiled
metadata, VMEM online softmax, dq and GQA-reducing dk / dv kernels) is described in
model/flash_tpu_kernels.py, which holds the kernel bodies. On CPU it runs in Pallas interpret
mode (`interpret=True`, or a `pltpu.InterpretParams()` for TPU semantics: DMAs, semaphores,
out-of-bounds reads); on TPU it compiles through Mosaic. Block sizes: multiples of 128 on a
TPU (the scores' lane dim), head_dim 128 (or the full dim).
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mogao_jax.data.batch import NUM_KINDS
from mogao_jax.model import flash
from mogao_jax.model import flash_tpu_kernels as kern

_SUBLANES = 8  # the metadata's fields ride in sublanes 0-3 of an [8, L] block


def _meta8(m_B4L):
  """[B, 4, L] -> [B, 8, L] int32 (sublane-padded: an (8, 128)-tiled block per slot block)."""
  return jnp.pad(m_B4L.astype(jnp.int32), ((0, 0), (0, _SUBLANES - 4), (0, 0)))


def _check_smem(b, ni, nj, interpret, what):
  need = kern.smem_bytes(b, ni, nj)
  if interpret is False and need > kern.SMEM_BYTES:
    raise ValueError(
        f"flash_tpu {what}: the block lists of {b} rows x {ni} x {nj} blocks need {need} bytes"
        f" of scalar memory, more than a TPU core's {kern.SMEM_BYTES}: put fewer rows on each"
        " device or raise model.attention_block")


def _check_shapes(lq, lk, bq, bk, interpret):
  """Clear errors before Mosaic's: lengths in whole blocks, lane-wide blocks on a TPU."""
  if lq % bq or lk % bk:
    raise ValueError(f"flash_tpu: {lq} query / {lk} key slots are not whole blocks of {bq} /"
                     f" {bk} (attention.flash_attention pads them)")
  if interpret is False and (bq % kern.LANES or bk % kern.LANES):
    raise ValueError(f"flash_tpu: model.attention_block = {bq} / {bk}; a TPU needs multiples of"
                     f" {kern.LANES} (the scores' and the metadata's lane dimension)")


def _params():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


@functools.lru_cache(maxsize=None)
def make(other_bytes: bytes, same_bytes: bytes, block_q: int, block_k: int, scale: float,
         interpret):
  """The custom_vjp kernel for one static setting (tables as bytes so they key a cache).

  Call: kernel(q [B, Lq, H, D], k / v [B, Lk, K, D], qm [B, 4, Lq], km [B, 4, Lk],
  vis [B, nq, nk] bool, full [B, nq, nk] bool) -> [B, Lq, H, D]; lengths multiples of the
  blocks (attention.flash_attention pads). `interpret`: False on TPU, True or a
  pltpu.InterpretParams() on CPU."""
  other = np.frombuffer(other_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  same = np.frombuffer(same_bytes, bool).reshape(NUM_KINDS, NUM_KINDS)
  rule = dict(scale=scale, other=other, same=same)
  bq, bk = block_q, block_k

  def query_grid(q, k):
    """The (row, head, query block, visit) grid's sizes and block specs, shared by the forward
    and dq kernels: q / kv / per-query-row blocks and the two metadata blocks."""
    b, h, lq, d = q.shape
    g, lk = h // k.shape[1], k.shape[2]
    nq, nk = lq // bq, lk // bk
    bits = kern._bits(nk)  # pylint: disable=protected-access
    kj = lambda bi, i, t, idx: kern._entry(idx, bi * nq + i, t, nk, bits)  # noqa: E731
    blk_q = pl.BlockSpec((None, None, bq, d), lambda bi, hi, i, t, idx, fu, cn: (bi, hi, i, 0))
    blk_kv = pl.BlockSpec((None, None, bk, d),
                          lambda bi, hi, i, t, idx, fu, cn: (bi, hi // g, kj(bi, i, t, idx), 0))
    row_q = pl.BlockSpec((None, None, 1, bq), lambda bi, hi, i, t, idx, fu, cn: (bi, hi, 0, i))
    metas = [pl.BlockSpec((None, _SUBLANES, bq), lambda bi, hi, i, t, idx, fu, cn: (bi, 0, i)),
             pl.BlockSpec((None, _SUBLANES, bk),
                          lambda bi, hi, i, t, idx, fu, cn: (bi, 0, kj(bi, i, t, idx)))]
    return (b, h, lq, lk, d, nq, nk), blk_q, blk_kv, row_q, metas

  def forward(q, k, v, qm, km, lists):
    """q [B, H, Lq, D], k / v [B, K, Lk, D] (head-major), qm / km [B, 8, L]."""
    (b, h, lq, lk, d, nq, nk), blk_q, blk_kv, row_q, metas = query_grid(q, k)
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, 1, lq), jnp.float32)]
    return pl.pallas_call(
        functools.partial(kern._fwd_kernel, nq=nq, nk=nk, **rule),  # pylint: disable=protected-access
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(b, h, nq, nk),
            in_specs=[blk_q, blk_kv, blk_kv, *metas],
            out_specs=[blk_q, row_q],
            scratch_shapes=[pltpu.VMEM((bq, kern.LANES), jnp.float32)] * 2
            + [pltpu.VMEM((bq, d), jnp.float32)]),
        out_shape=out_shape,
        compiler_params=_params(), interpret=interpret, name="mogao_flash_tpu_fwd",
        cost_estimate=flash.cost_estimate("fwd", b, h, lq, lk, d,
                                          (*lists, q, k, v, qm, km, *out_shape)),
    )(*lists, q, k, v, qm, km)

  def dq_call(q, k, v, qm, km, lists, do, lse, delta):
    (b, h, lq, lk, d, nq, nk), blk_q, blk_kv, row_q, metas = query_grid(q, k)
    return pl.pallas_call(
        functools.partial(kern._dq_kernel, nq=nq, nk=nk, **rule),  # pylint: disable=protected-access
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(b, h, nq, nk),
            in_specs=[blk_q, blk_kv, blk_kv, *metas, blk_q, row_q, row_q],
            out_specs=blk_q, scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(), interpret=interpret, name="mogao_flash_tpu_dq",
        cost_estimate=flash.cost_estimate("dq", b, h, lq, lk, d,
                                          (*lists, q, k, v, qm, km, do, lse, delta, q)),
    )(*lists, q, k, v, qm, km, do, lse, delta)

  def dkv_call(q, k, v, qm, km, lists_t, do, lse, delta):
    """A program per (row, kv head, key block) over g query heads x its visited query blocks."""
    b, h, lq, d = q.shape
    kh, lk = k.shape[1], k.shape[2]
    g, nq, nk = h // kh, lq // bq, lk // bk
    bits = kern._bits(nq)  # pylint: disable=protected-access
    qi = lambda bi, j, u, idx: kern._entry(idx, bi * nk + j, u % nq, nq, bits)  # noqa: E731
    head = lambda hi, u: hi * g + u // nq  # noqa: E731  the query head of step u
    blk_q = pl.BlockSpec((None, None, bq, d), lambda bi, hi, j, u, idx, fu, cn:
                         (bi, head(hi, u), qi(bi, j, u, idx), 0))
    row_q = pl.BlockSpec((None, None, 1, bq), lambda bi, hi, j, u, idx, fu, cn:
                         (bi, head(hi, u), 0, qi(bi, j, u, idx)))
    blk_kv = pl.BlockSpec((None, None, bk, d), lambda bi, hi, j, u, idx, fu, cn: (bi, hi, j, 0))
    return pl.pallas_call(
        functools.partial(kern._dkv_kernel, nq=nq, nk=nk, g=g, **rule),  # pylint: disable=protected-access
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(b, kh, nk, g * nq),
            in_specs=[blk_q, blk_kv, blk_kv,
                      pl.BlockSpec((None, _SUBLANES, bq), lambda bi, hi, j, u, idx, fu, cn:
                                   (bi, 0, qi(bi, j, u, idx))),
                      pl.BlockSpec((None, _SUBLANES, bk),
                                   lambda bi, hi, j, u, idx, fu, cn: (bi, 0, j)),
                      blk_q, row_q, row_q],
            out_specs=[blk_kv, blk_kv],
            scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32)] * 2),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_params(), interpret=interpret, name="mogao_flash_tpu_dkv",
        cost_estimate=flash.cost_estimate("dkv", b, h, lq, lk, d,
                                          (*lists_t, q, k, v, qm, km, do, lse, delta, k, v)),
    )(*lists_t, q, k, v, qm, km, do, lse, delta)

  @jax.custom_vjp
  def core(q, k, v, qm, km, lists, lists_t):
    return forward(q, k, v, qm, km, lists)[0]

  def fwd(q, k, v, qm, km, lists, lists_t):
    out, lse = forward(q, k, v, qm, km, lists)
    return out, (q, k, v, qm, km, lists, lists_t, out, lse)

  def bwd(res, do):
    q, k, v, qm, km, lists, lists_t, out, lse = res
    delta = jnp.einsum("bhld,bhld->bhl", do.astype(jnp.float32),
                       out.astype(jnp.float32))[:, :, None, :]
    dq = dq_call(q, k, v, qm, km, lists, do, lse, delta)
    dk, dv = dkv_call(q, k, v, qm, km, lists_t, do, lse, delta)
    return dq, dk, dv, None, None, None, None

  core.defvjp(fwd, bwd)

  def kernel(q_BLHD, k_BLKD, v_BLKD, qm_B4L, km_B4L, vis_BIJ, full_BIJ):
    b, nq, nk = vis_BIJ.shape
    _check_shapes(q_BLHD.shape[1], k_BLKD.shape[1], bq, bk, interpret)
    _check_smem(b, nq, nk, interpret, "forward / dq")
    _check_smem(b, nk, nq, interpret, "dk / dv")
    heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B, L, H, D] <-> [B, H, L, D]
    lists = kern.pack_lists(vis_BIJ, full_BIJ)
    lists_t = kern.pack_lists(vis_BIJ.transpose(0, 2, 1), full_BIJ.transpose(0, 2, 1))
    out = core(heads(q_BLHD), heads(k_BLKD), heads(v_BLKD), _meta8(qm_B4L), _meta8(km_B4L),
               lists, lists_t)
    return heads(out)

  return kernel


def for_tpu(other_bytes: bytes, same_bytes: bytes, block_q: int, block_k: int, scale: float):
  """make(..., interpret=False) as the TPU branch of attention.flash_dispatch. platform_dependent
  traces every branch, also on a host that will never lower this one (a CPU run with blocks
  of 16), so a shape this kernel refuses on a TPU (blocks not multiples of 128, block lists
  over scalar memory) must fail when the branch is LOWERED for a TPU, not when it is traced:
  such a call becomes a kernel whose TPU lowering raises that error."""
  kernel = make(other_bytes, same_bytes, block_q, block_k, scale, False)

  def branch(q_BLHD, k_BLKD, v_BLKD, qm_B4L, km_B4L, vis_BIJ, full_BIJ):
    b, nq, nk = vis_BIJ.shape
    try:
      _check_shapes(q_BLHD.shape[1], k_BLKD.shape[1], block_q, block_k, False)
      _check_smem(b, nq, nk, False, "forward / dq")
      _check_smem(b, nk, nq, False, "dk / dv")
    except ValueError as e:
      return _refused(str(e), q_BLHD, k_BLKD, v_BLKD)
    return kernel(q_BLHD, k_BLKD, v_BLKD, qm_B4L, km_B4L, vis_BIJ, full_BIJ)

  return branch


_refused_p = jax.extend.core.Primitive("mogao_flash_tpu_refused")
_refused_p.def_abstract_eval(lambda x, *_, msg: x)


def _raise_on_lowering(ctx, *args, msg):
  raise ValueError(msg)


mlir.register_lowering(_refused_p, _raise_on_lowering)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _refused(msg, q, k, v):
  return _refused_p.bind(q, k, v, msg=msg)


_refused.defvjp(lambda msg, q, k, v: (_refused(msg, q, k, v), (q, k, v)),
                lambda msg, res, g: tuple(_refused_p.bind(x, g, msg=msg) for x in res))
