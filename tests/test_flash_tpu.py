"""The TPU kernel (model/flash_tpu.py, Pallas Mosaic) in Pallas interpret mode on this CPU,
against the dense reference (layers.attention on masks.visibility's L x L mask), on the cases
of tests/test_flash.py batched as one set of 4 rows (one compile, as compiles dominate):
packed rows with documents, images and padding, a text-only row, an image-only row; GQA
(2 query heads per kv head, so the dk / dv kernel's in-kernel group sum is exercised); 88
slots in blocks of 16 (padded); plain multi-head and one kv head under --runslow. Tolerances as in
test_flash.py (f32 1e-5; bf16 against the f32 dense result 3e-2 / 6e-2).
One tiny case runs in pltpu.InterpretParams() mode: TPU semantics (DMAs, semaphores, reads out
of bounds poisoned), so a block index past the array or a missing DMA wait shows up as a
wrong number. The compile for real chips (v5p, v5e, v6e) is tests/test_flash_tpu_aot.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mogao_jax.model import attention, flash_tpu, flash_tpu_kernels
from tests.test_flash import OTHER, SAME, TOL, _dense, _grads, _meta, _qkv


def _tpu(meta, q, k, v, block, interpret=True):
  """attention.flash_attention's wiring (pad, tile maps, stacked metadata) with this kernel."""
  lq = q.shape[1]
  lp = -(-lq // block) * block
  pm = attention.pad_meta(meta, lp)
  vis, full = attention.tile_maps(pm, pm, OTHER, SAME, block, block)
  stack = jnp.stack([pm[f] for f in ("segment", "kind", "image", "t")], axis=1)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, lp - lq), (0, 0), (0, 0)))  # noqa: E731
  kernel = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), block, block,
                          float(1 / np.sqrt(q.shape[-1])), interpret)
  return kernel(pad(q), pad(k), pad(v), stack, stack, vis, full)[:, :lq]


def _all_rows():
  """The mixed (2 rows), text-only and image-only rows of test_flash.py as one batch of 4
  rows of 88 slots (the shorter rows padded: segment 0): one compile covers every case."""
  metas = [_meta(c) for c in ("mixed", "text", "images")]
  n = max(m["segment"].shape[1] for m in metas)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, n - x.shape[1])) + ((0, 0),) * (x.ndim - 2))  # noqa
  return {f: jnp.concatenate([pad(m[f]) for m in metas]) for f in metas[0]}


@pytest.fixture(scope="module")
def rows():
  return _all_rows()


def _check_against_dense(meta, block, kv_heads):
  qkv, w, real = _qkv(meta, kv_heads=kv_heads)
  fl = functools.partial(_tpu, meta, block=block)
  dense = functools.partial(_dense, meta)
  out, ref = np.asarray(jax.jit(fl)(*qkv)), np.asarray(jax.jit(dense)(*qkv))
  np.testing.assert_allclose(out[real], ref[real], **TOL)
  for r in range(real.shape[0]):  # every row, not just the batch as a whole, has content
    assert np.abs(ref[r][real[r]]).max() > 0.1
  assert not out[~real].any()  # a query that sees no key: exactly zero
  grads = _grads(fl, qkv, w)
  for g, g_ref, name in zip(grads, _grads(dense, qkv, w), "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), err_msg=f"d{name}", **TOL)
    assert np.abs(np.asarray(g_ref)).max() > 0.1
  assert not np.asarray(grads[0])[~real].any()  # blind (padding) queries: zero dq


def test_outputs_and_gradients_equal_dense(rows):
  """Mixed, text-only and image-only rows; GQA with 2 query heads per kv head (the dk / dv
  kernel sums the group in its scratch); 88 slots in blocks of 16 (padded to 96)."""
  _check_against_dense(rows, 16, 2)


@pytest.mark.slow
@pytest.mark.parametrize("block,kv_heads", [(32, 4), (16, 1)])
def test_other_head_layouts_equal_dense(rows, block, kv_heads):
  """Plain multi-head in blocks of 32, and one kv head for all 4 query heads."""
  _check_against_dense(rows, block, kv_heads)


@pytest.mark.slow  # interpret mode in bf16 (~20 s): keeps the default suite inside its 20 minutes
def test_bfloat16_inputs(rows):
  meta = rows
  qkv, w, real = _qkv(meta, dtype=jnp.bfloat16)
  fl = functools.partial(_tpu, meta, block=16)
  out = jax.jit(fl)(*qkv)
  assert out.dtype == jnp.bfloat16
  ref = np.asarray(_dense(meta, *qkv))
  np.testing.assert_allclose(np.asarray(out, np.float32)[real], ref[real], atol=3e-2)
  for a, r in zip(_grads(fl, qkv, w), _grads(functools.partial(_dense, meta), qkv, w)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r, np.float32), atol=6e-2)


def _tpu_semantics(gradients: bool):
  """pltpu.InterpretParams(): DMAs and semaphores simulated, an out-of-bounds read raises (so
  a block index past the array fails the test)."""
  meta = _meta("text")  # 60 slots in 2 blocks of 32, 2 query heads on 1 kv head: 8 steps a kernel
  qkv, w, real = _qkv(meta, heads=2, kv_heads=1)
  params = pltpu.InterpretParams(out_of_bounds_reads="raise")
  fl = functools.partial(_tpu, meta, block=32, interpret=params)
  out = np.asarray(jax.jit(fl)(*qkv))
  ref = np.asarray(_dense(meta, *qkv))
  np.testing.assert_allclose(out[real], ref[real], **TOL)
  assert not out[~real].any()
  if gradients:
    for g, g_ref in zip(_grads(fl, qkv, w), _grads(functools.partial(_dense, meta), qkv, w)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), **TOL)


def test_tpu_semantics_interpret_mode():
  _tpu_semantics(gradients=False)


@pytest.mark.slow
def test_tpu_semantics_interpret_mode_gradients():
  """The dq and dk / dv kernels under the same TPU-semantics interpreter (~1 min)."""
  _tpu_semantics(gradients=True)


@pytest.mark.parametrize("nj", [5, 40, 300])
def test_packed_lists_round_trip(nj):
  """The scalar-prefetch lists decode (by the index maps' own _entry) to the visible blocks in
  order, each with its full flag, then the last visible block repeated (no new DMA)."""
  rng = np.random.default_rng(nj)
  vis = rng.random((2, 3, nj)) < 0.4
  vis[0, 1] = False  # a block that sees nothing
  full = vis & (rng.random(vis.shape) < 0.5)
  idx, fl, cnt = map(np.asarray, flash_tpu_kernels.pack_lists(jnp.asarray(vis), jnp.asarray(full)))
  bits = flash_tpu_kernels._bits(nj)  # pylint: disable=protected-access
  assert idx.dtype == np.int32 and idx.size == 2 * 3 * -(-nj // (32 // bits))
  for r in range(6):
    want = np.flatnonzero(vis.reshape(6, nj)[r])
    assert cnt[r] == want.size
    t = np.arange(nj, dtype=np.int32)  # all entries of the row at once
    got = np.asarray(flash_tpu_kernels._entry(idx, r, t, nj, bits)).tolist()  # pylint: disable=protected-access
    flags = np.asarray(flash_tpu_kernels._entry(fl, r, t, nj, 1)).tolist()  # pylint: disable=protected-access
    assert got[:want.size] == want.tolist()
    assert set(got[want.size:]) <= {int(want[-1]) if want.size else 0}
    assert flags[:want.size] == full.reshape(6, nj)[r][want].astype(int).tolist()
    assert not any(flags[want.size:])


def test_scalar_memory_overflow_is_refused():
  """8 rows x 64k slots in 128-blocks would need 4 MiB of scalar memory: a clear error."""
  kernel = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), 128, 128, 1.0, False)
  vis = jnp.ones((8, 512, 512), bool)
  q = jnp.zeros((8, 512 * 128, 1, 128), jnp.bfloat16)
  m = jnp.zeros((8, 4, 512 * 128), jnp.int32)
  with pytest.raises(ValueError, match="scalar memory.*model.attention_block"):
    jax.eval_shape(kernel, q, q, q, m, m, vis, vis)


def test_bad_shapes_are_refused():
  """Lengths not in whole blocks, and (compiled for a TPU) blocks narrower than a lane."""
  m = jnp.zeros((1, 4, 64), jnp.int32)
  q = jnp.zeros((1, 64, 2, 128), jnp.bfloat16)
  vis = jnp.ones((1, 2, 2), bool)
  odd = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), 32, 48, 1.0, True)
  with pytest.raises(ValueError, match="not whole blocks of 32 / 48"):
    jax.eval_shape(odd, q, q, q, m, m, vis, vis)
  narrow = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), 32, 32, 1.0, False)
  with pytest.raises(ValueError, match="model.attention_block = 32 / 32; a TPU needs multiples"):
    jax.eval_shape(narrow, q, q, q, m, m, vis, vis)
