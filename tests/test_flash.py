"""The fused Pallas kernel (model.attention = "flash", model/flash.py; Pallas interpret mode on
this CPU) against the dense reference (layers.attention on masks.visibility's L x L mask).

Outputs on every real query slot and the gradients of q, k, v agree on random packed rows: two
rows of several documents with images and padding, a text-only row, an image-only row; GQA
(2 query heads per kv head) and plain multi-head; lengths that are not a multiple of the block
(88 slots in blocks of 16 and 32). Tolerances: float32 inputs rtol 1e-5 / atol 1e-5 (the online
softmax sums the same terms in another order; observed ~1e-6); bfloat16 inputs against the
float32 dense result atol 3e-2 (bf16 q, k, v and probabilities: ~1e-2 observed).
The tile maps are checked against the dense mask itself: a skipped tile holds no visible pair,
a "full" tile no invisible one, and the kernel does use both (a forged map changes the result). The backward at blocks smaller than
the forward's; the TPU lowering refused; the declared pl.CostEstimate of each pallas_call (GPU
and TPU kernels, one formula). tests/test_flash_aot.py compiles it for GPUs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from mogao_jax.data.batch import Kind
from mogao_jax.model import attention, flash, flash_tpu, layers, masks
from tests import rowkit

OTHER = masks.parse_table("1100,1100,1110,1110")
SAME = masks.parse_table("0000,0100,0110,0001")
TOL = dict(rtol=1e-5, atol=1e-5)


def _text_rows():
  """One row: a 20-token and a 30-token document (causal text), then 10 padding slots."""
  seg = np.concatenate([np.full(20, 1), np.full(30, 2), np.zeros(10, int)])[None]
  t = np.concatenate([np.arange(20), np.arange(30), np.zeros(10, int)])
  kind = np.where(seg > 0, int(Kind.TXT), int(Kind.PAD))
  return {"segment": jnp.asarray(seg, jnp.int32), "kind": jnp.asarray(kind, jnp.int32),
          "image": jnp.zeros(seg.shape, jnp.int32),
          "pos": jnp.asarray(np.stack([t, 0 * t, 0 * t], -1)[None], jnp.int32)}


def _meta(case):
  if case == "text":
    return _text_rows()
  rows = rowkit.mixed_rows() if case == "mixed" else rowkit.images_only_rows()
  return masks.joint_metadata({k: jnp.asarray(v) for k, v in rows.items()})


def _qkv(meta, heads=4, kv_heads=2, d=8, dtype=jnp.float32, seed=1):
  b, l = meta["segment"].shape
  rng = np.random.default_rng(seed)
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  real = np.asarray(meta["segment"] > 0)
  w = arr(b, l, heads, d) * jnp.asarray(real)[:, :, None, None]  # no cotangent on padding
  q, k, v = arr(b, l, heads, d), arr(b, l, kv_heads, d), arr(b, l, kv_heads, d)
  return tuple(x.astype(dtype) for x in (q, k, v)), w, real


def _dense(meta, q, k, v):
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  return layers.attention(q, k, v, masks.visibility(meta, meta, OTHER, SAME))


def _flash(meta, q, k, v, block):
  return attention.flash_attention(q, k, v, meta, meta, other=OTHER, same=SAME,
                                   block_q=block, block_k=block)


def _grads(f, qkv, w):
  return jax.jit(jax.grad(lambda q, k, v: (f(q, k, v).astype(jnp.float32) * w).sum(),
                          (0, 1, 2)))(*qkv)


@pytest.mark.parametrize("case,block,kv_heads", [
    ("mixed", 16, 2), ("mixed", 32, 4), ("text", 16, 2), ("images", 16, 1)])
def test_outputs_and_gradients_equal_dense(case, block, kv_heads):
  meta = _meta(case)
  qkv, w, real = _qkv(meta, kv_heads=kv_heads)
  dense = functools.partial(_dense, meta)
  fl = functools.partial(_flash, meta, block=block)
  out, ref = np.asarray(jax.jit(fl)(*qkv)), np.asarray(jax.jit(dense)(*qkv))
  np.testing.assert_allclose(out[real], ref[real], **TOL)
  assert np.abs(ref[real]).max() > 0.1
  assert not out[~real].any()  # a query that sees nothing: zero output (see flash.py)
  for g, g_ref, name in zip(_grads(fl, qkv, w), _grads(dense, qkv, w), "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), err_msg=f"d{name}", **TOL)
    assert np.abs(np.asarray(g_ref)).max() > 0.1


@pytest.mark.slow  # interpret mode in bf16 (~20 s): keeps the default suite inside its 20 minutes
def test_bfloat16_inputs():
  meta = _meta("mixed")
  qkv, w, real = _qkv(meta, dtype=jnp.bfloat16)
  out = jax.jit(functools.partial(_flash, meta, block=16))(*qkv)
  assert out.dtype == jnp.bfloat16
  ref = np.asarray(_dense(meta, *qkv))
  np.testing.assert_allclose(np.asarray(out, np.float32)[real], ref[real], atol=3e-2)
  g = _grads(functools.partial(_flash, meta, block=16), qkv, w)
  g_ref = _grads(functools.partial(_dense, meta), qkv, w)
  for a, r in zip(g, g_ref):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r, np.float32), atol=6e-2)


def _tiles(x_BLL, block):
  b, l, _ = x_BLL.shape
  return x_BLL.reshape(b, l // block, block, l // block, block).transpose(0, 1, 3, 2, 4)


@pytest.mark.parametrize("case,block", [("mixed", 8), ("text", 10), ("images", 4)])
def test_tile_maps_are_conservative(case, block):
  """Against the dense mask: every skipped tile is invisible, every full tile fully visible;
  and the maps are not trivial (some tiles skipped, some full)."""
  meta = _meta(case)
  l = -(-meta["segment"].shape[1] // block) * block
  pm = attention.pad_meta(meta, l)
  vis, full = map(np.asarray, attention.tile_maps(pm, pm, OTHER, SAME, block, block))
  as_meta = {"segment": pm["segment"], "kind": pm["kind"], "image": pm["image"],
             "pos": pm["t"][..., None]}
  tiles = _tiles(np.asarray(masks.visibility(as_meta, as_meta, OTHER, SAME)), block)
  assert not tiles[~vis].any()
  assert tiles[full].all()
  assert (~vis).any() and full.any() and (vis & ~full).any()


def test_kernel_trusts_its_maps():
  """A forged map changes the result: marking every tile visible and full (no mask at all)
  gives plain softmax attention over all 64 (padded) slots; marking none visible gives zeros."""
  meta = _meta("text")
  (q, k, v), _, real = _qkv(meta)
  pm = attention.pad_meta(meta, 64)
  stack = jnp.stack([pm[f] for f in ("segment", "kind", "image", "t")], axis=1)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 4), (0, 0), (0, 0)))  # noqa: E731  60 -> 64
  kernel = flash.make(OTHER.tobytes(), SAME.tobytes(), 16, 16, float(1 / np.sqrt(8)), True)
  ones = jnp.ones((1, 4, 4), bool)
  all_on = np.asarray(kernel(pad(q), pad(k), pad(v), stack, stack, ones, ones))[:, :60]
  unmasked = np.asarray(layers.attention(pad(q), pad(k), pad(v),
                                         jnp.ones((1, 64, 64), bool)))[:, :60]
  np.testing.assert_allclose(all_on, unmasked, **TOL)
  none = np.asarray(kernel(pad(q), pad(k), pad(v), stack, stack, ~ones, ~ones))
  assert not none.any()
  assert not np.allclose(all_on[real], np.asarray(_dense(meta, q, k, v))[real], atol=1e-2)


def test_backward_at_smaller_blocks_equals_dense(monkeypatch):
  """The backward kernels run at blocks of at most flash.BWD_BLOCK on maps refined from the
  forward's (GPU shared memory): 32-slot forward blocks, 16-slot backward blocks."""
  monkeypatch.setattr(flash, "BWD_BLOCK", 16)
  meta = _meta("mixed")
  qkv, w, _ = _qkv(meta, seed=3)
  got = _grads(functools.partial(_flash, meta, block=32), qkv, w)
  for g, g_ref, name in zip(got, _grads(functools.partial(_dense, meta), qkv, w), "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), err_msg=f"d{name}", **TOL)


def test_tpu_lowering_refuses_blocks_a_tpu_cannot_take():
  """The kernel is chosen by the platform the step is lowered for, not the host's backend: a
  TPU lowering from this CPU host takes the TPU kernel's branch (test_dry_run's
  flash_train_step_for_a_tpu_topology compiles it with libtpu), and blocks it cannot take stop
  at lowering naming the key, not in Mosaic and not as the interpret-mode emulation."""
  meta = _meta("text")
  (q, k, v), _, _ = _qkv(meta)
  with pytest.raises(ValueError, match="model.attention_block = 16 / 16; a TPU needs multiples"):
    jax.jit(functools.partial(_flash, meta, block=16)).trace(q, k, v).lower(
        lowering_platforms=("tpu",))

def _pallas_calls(jaxpr):
  """The pallas_call equations of a jaxpr, nested ones (custom_vjp, platform_dependent's
  branches, jit) included."""
  for e in jaxpr.eqns:
    if e.primitive.name == "pallas_call":
      yield e
      continue
    for p in e.params.values():
      for x in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(x, jax.extend.core.ClosedJaxpr):
          yield from _pallas_calls(x.jaxpr)
        elif isinstance(x, jax.extend.core.Jaxpr):
          yield from _pallas_calls(x)


def _declared(f, *args):
  """{kernel name: (its pl.CostEstimate, the bytes of its operands and results)} of the
  gradient of sum(f(q, k, v)) (traced only)."""
  jx = jax.make_jaxpr(jax.grad(lambda q, k, v: f(q, k, v).sum(), (0, 1, 2)))(*args)
  costs = {}
  for e in _pallas_calls(jx.jaxpr):
    io = sum(x.aval.size * x.aval.dtype.itemsize for x in (*e.invars, *e.outvars))
    costs.setdefault(e.params["name"], set()).add((e.params["cost_estimate"], io))
  return {name: c.pop() for name, c in costs.items() if len(c) == 1}


def test_kernels_declare_the_dense_upper_bound_of_their_work():
  """Every pallas_call carries flash.cost_estimate: FLOPs 4 / 6 / 8 x B x H x Lq x Lk x D
  (fwd / dq / dk+dv, every tile: the visited lists are data dependent, a CostEstimate static),
  one exp per score, the bytes of its operands and results. The text row: B 1, 60 slots padded
  to 64, H 4 query / 2 kv heads, D 8, f32; blocks of 16 (4 x 4 tiles)."""
  meta = _meta("text")
  (q, k, v), _, _ = _qkv(meta)
  got = _declared(functools.partial(_flash, meta, block=16), q, k, v)
  scores = 1 * 4 * 64 * 64
  q_b, kv_b, meta_b, lse_b = 64 * 4 * 8 * 4, 64 * 2 * 8 * 4, 4 * 64 * 4, 4 * 64 * 4
  lists_b = (4 * 4 + 4 * 4 + 4) * 4  # key-block indices, full flags [1, 4, 4], counts [1, 4, 1]
  ins = q_b + 2 * kv_b + 2 * meta_b + lists_b  # q, k, v, qm, km and the lists
  want = {"mogao_flash_fwd": (4, ins + q_b + lse_b),  # out, lse
          "mogao_flash_dq": (6, ins + q_b + 2 * lse_b + q_b),  # + do, lse, delta; dq
          "mogao_flash_dkv": (8, ins + q_b + 2 * lse_b + 2 * q_b)}  # dk, dv f32 per query head
  assert set(got) == set(want)  # one estimate per kernel (the CUDA and interpret branches agree)
  for name, (per_score, nbytes) in want.items():
    assert got[name] == (pl.CostEstimate(flops=per_score * scores * 8, transcendentals=scores,
                                          bytes_accessed=nbytes), nbytes), name


def test_tpu_kernels_declare_the_same_formula():
  """flash_tpu's three pallas_calls (interpret mode, traced) declare flash.cost_estimate too:
  one row of 128 slots, blocks of 128, 2 query heads over 1 kv head, D 128, f32; bytes = its
  operands and results (the packed block lists, the sublane-padded metadata)."""
  meta = attention.pad_meta(_meta("text"), 128)
  stack = jnp.stack([meta[f] for f in ("segment", "kind", "image", "t")], axis=1)
  vis, full = attention.tile_maps(meta, meta, OTHER, SAME, 128, 128)
  kernel = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), 128, 128, 0.1, True)
  x = lambda n: jnp.zeros((1, 128, n, 128), jnp.float32)  # noqa: E731
  got = _declared(lambda q, k, v: kernel(q, k, v, stack, stack, vis, full), x(2), x(1), x(1))
  assert set(got) == {"mogao_flash_tpu_fwd", "mogao_flash_tpu_dq", "mogao_flash_tpu_dkv"}
  scores = 2 * 128 * 128
  for name, per_score in (("fwd", 4), ("dq", 6), ("dkv", 8)):
    c, io = got[f"mogao_flash_tpu_{name}"]
    assert (c.flops, c.transcendentals, c.bytes_accessed) == (
        per_score * scores * 128, scores, io), name
