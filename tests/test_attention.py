"""The blockwise attention (model.attention = "blockwise") against the dense reference: same
outputs on every real query slot and same gradients, on packed rows with several documents,
images and padding; fully invisible blocks are skipped; the compiled program never holds an
L x L array; the whole model gives the same loss and gradients under scan and remat.

Tolerances (float32): outputs and gradients within rtol 1e-5 / atol 1e-6 of dense (the online
softmax sums the same terms in another order; observed differences are ~1e-7 relative)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.data.batch import Kind
from mogao_jax.model import attention, layers, masks
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao
from mogao_jax.model import flow
from tests import modelkit, rowkit
from tests.configs import tiny_config

OTHER = masks.parse_table("1100,1100,1110,1110")
SAME = masks.parse_table("0000,0100,0110,0001")
TOL = dict(rtol=1e-5, atol=1e-6)


def _rows(l_txt=48, l_vis=40):
  return rowkit.mixed_rows(l_txt, l_vis)


@pytest.fixture(scope="module")
def qkv():
  meta = masks.joint_metadata({k: jnp.asarray(v) for k, v in _rows().items()})
  b, l = meta["segment"].shape
  rng = np.random.default_rng(1)
  h, kh, d = 4, 2, 8  # GQA: 2 query heads per kv head
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  real = np.asarray(meta["segment"] > 0)
  # Output cotangent: zero on padding queries (nothing reads them; see attention.py).
  w = arr(b, l, h, d) * jnp.asarray(real)[:, :, None, None]
  return meta, arr(b, l, h, d), arr(b, l, kh, d), arr(b, l, kh, d), w, real


def _dense(meta, q, k, v):
  return layers.attention(q, k, v, masks.visibility(meta, meta, OTHER, SAME))


def _blockwise(meta, q, k, v, block):
  return attention.blockwise_attention(q, k, v, meta, meta, other=OTHER, same=SAME,
                                       block_q=block, block_k=block)


@pytest.mark.parametrize("block", [8, 32])  # 88 slots: 11 blocks of 8; 3 of 32 (padded to 96)
def test_forward_equals_dense(qkv, block):
  meta, q, k, v, _, real = qkv
  dense = np.asarray(jax.jit(_dense)(meta, q, k, v))
  blk = np.asarray(jax.jit(functools.partial(_blockwise, block=block))(meta, q, k, v))
  np.testing.assert_allclose(blk[real], dense[real], **TOL)
  assert not np.allclose(dense[real], 0)


def test_gradients_equal_dense(qkv):
  meta, q, k, v, w, _ = qkv
  def grads(f):
    return jax.jit(jax.grad(lambda q, k, v: (f(meta, q, k, v) * w).sum(), (0, 1, 2)))(q, k, v)
  for g_blk, g_dense in zip(grads(functools.partial(_blockwise, block=16)), grads(_dense)):
    np.testing.assert_allclose(np.asarray(g_blk), np.asarray(g_dense), **TOL)
    assert np.abs(np.asarray(g_dense)).max() > 0.1


def test_multi_head_without_groups(qkv):
  """K = H (plain multi-head) takes the same path with groups of one."""
  meta, q, k, v, _, real = qkv
  k4, v4 = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
  np.testing.assert_allclose(np.asarray(_blockwise(meta, q, k4, v4, 16))[real],
                             np.asarray(_dense(meta, q, k4, v4))[real], **TOL)


def _two_documents(block=8):
  """One row of 4 blocks of text: document 1 fills blocks 0-1, document 2 blocks 2-3."""
  n = 2 * block
  seg = np.repeat([1, 2], n)[None]
  meta = {"segment": jnp.asarray(seg), "kind": jnp.full(seg.shape, int(Kind.TXT)),
          "image": jnp.zeros(seg.shape, jnp.int32),
          "pos": jnp.asarray(np.stack([np.tile(np.arange(n), 2), 0 * seg[0], 0 * seg[0]],
                                      -1)[None])}
  return meta


def test_invisible_blocks_are_skipped():
  """Causal text in two documents: of 4 x 4 block pairs only the 3 lower-triangle pairs inside
  each document are computed; the counter only moves inside the computing branch."""
  meta = _two_documents(block=8)
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 32, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 32, 1, 8)), jnp.float32)
  out, visits = attention.blockwise_attention(q, k, k, meta, meta, other=OTHER, same=SAME,
                                              block_q=8, block_k=8, return_visits=True)
  assert int(visits) == 6
  np.testing.assert_allclose(np.asarray(out), np.asarray(_dense(meta, q, k, k)), **TOL)


def test_block_map_uses_kinds_and_images():
  """Text queries never read NVAE keys (mask_other TXT row 1100), even of an earlier T; NVAE
  keys are read by the NVAE queries of the same image only (mask_same), in either T order."""
  def meta(kind, t, image):
    n = 4
    return {"segment": jnp.ones((1, n), jnp.int32), "kind": jnp.full((1, n), int(kind)),
            "image": jnp.full((1, n), image, jnp.int32), "t": jnp.full((1, n), t, jnp.int32)}
  prompt, nvae, later = meta(Kind.TXT, 0, 0), meta(Kind.NVAE, 1, 7), meta(Kind.TXT, 5, 0)
  may = lambda q, k: bool(attention.block_map(q, k, OTHER, SAME, 4, 4)[0, 0, 0])  # noqa: E731
  assert not may(later, nvae)  # T allows it, the kind rule does not
  assert may(later, prompt)
  assert may(nvae, prompt)  # the image reads its (earlier) prompt
  assert not may(nvae, later)  # but not later text
  assert may(nvae, nvae)
  assert not may(nvae, meta(Kind.NVAE, 1, 8))  # another noisy image of the same T: invisible
  assert not may(prompt, later)


def test_compiled_memory_is_below_the_mask():
  """fwd + bwd at L = 2048: XLA's temporaries of the blockwise program are below the bytes of
  the dense path's boolean L x L mask alone (its scores take 4 x heads times more)."""
  l, block = 2048, 128
  meta = _two_documents(block=l // 4)
  q = jax.ShapeDtypeStruct((1, l, 2, 16), jnp.float32)
  k = jax.ShapeDtypeStruct((1, l, 1, 16), jnp.float32)

  def grads(f):
    return jax.jit(jax.grad(lambda q, k, v: f(meta, q, k, v).sum(), (0, 1, 2)))

  blk = grads(functools.partial(_blockwise, block=block)).lower(q, k, k).compile()
  dense = grads(_dense).lower(q, k, k).compile()
  mask_bytes = l * l
  assert blk.memory_analysis().temp_size_in_bytes < mask_bytes / 2
  assert dense.memory_analysis().temp_size_in_bytes > mask_bytes


@pytest.fixture(scope="module")
def model_setup():
  c = tiny_config()
  c.model.remat = "full"  # scanned (tiny_config keeps scan_layers) and rematerialised
  model = Mogao.from_config(c)
  params = modelkit.perturbed_params(c, model)
  batch = {k: jnp.asarray(v) for k, v in _rows(c.data.l_txt, c.data.l_vis).items()}
  rng = np.random.default_rng(3)
  batch["txt_patch"] = jnp.asarray(rng.uniform(-1, 1, batch["txt_patch"].shape[:2] + (48,)),
                                   jnp.float32)
  batch["vis_latent"] = jnp.asarray(rng.uniform(-1, 1, batch["vis_latent"].shape[:2] + (48,)),
                                    jnp.float32)
  t_BN, noise = flow.draw_noise(jax.random.key(0), batch, c.flow)
  return c, params, batch, t_BN, noise


def _loss_and_grads(c, params, batch, t_BN, noise):
  model = Mogao.from_config(c)
  fn = lambda p: step_lib.loss_fn(p, model, batch, t_BN, noise, c.loss)[0]  # noqa: E731
  return jax.jit(jax.value_and_grad(fn))(params)


@pytest.fixture(scope="module")
def dense_loss_and_grads(model_setup):
  return _loss_and_grads(*model_setup)


@pytest.mark.parametrize("impl", ["blockwise", "flash"])
def test_model_loss_and_gradients_equal_dense(model_setup, dense_loss_and_grads, impl):
  """The whole model (scan + remat, both streams, GQA): blockwise == dense and the Pallas
  kernel (interpret mode here) == dense."""
  c, params, batch, t_BN, noise = model_setup
  dense = dense_loss_and_grads
  c = c.copy_and_resolve_references()
  c.model.attention, c.model.attention_block = impl, 32
  blk = _loss_and_grads(c, params, batch, t_BN, noise)
  np.testing.assert_allclose(float(blk[0]), float(dense[0]), rtol=1e-5)
  flat_b, flat_d = jax.tree.leaves(blk[1]), jax.tree.leaves(dense[1])
  for gb, gd in zip(flat_b, flat_d):
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gd), **TOL)


def test_config_validation(config):
  config.model.attention = "sparse"
  with pytest.raises(ValueError, match="model.attention"):
    ModelConfig.from_config(config.model)
  config.model.attention, config.model.attention_block = "blockwise", 0
  with pytest.raises(ValueError, match="model.attention_block"):
    ModelConfig.from_config(config.model)


@pytest.mark.slow  # two sharded step compiles (~40 s cold)
def test_sharded_blockwise_step_equals_dense(model_setup):
  """On a (data 2, fsdp 2, tensor 2) mesh of the 8 simulated devices the blockwise step gives
  the dense single-device losses and gradient norm (the batch stays sharded inside the block
  loops; the skip predicate is the batch-wide OR)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tests import shardkit  # pylint: disable=g-import-not-at-top
  c, _, batch, _, _ = model_setup
  c = c.copy_and_resolve_references()
  c.model.remat, c.model.num_kv_heads = "none", 2
  rows = {k: np.concatenate([np.asarray(v)] * 2) for k, v in batch.items()}  # 4 rows
  dense, _ = shardkit.run_steps(c, [rows], jax.devices()[:1])
  c.model.attention, c.model.attention_block = "blockwise", 32
  c.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
  blk, _ = shardkit.run_steps(c, [rows], jax.devices())
  for k in dense[0]:
    np.testing.assert_allclose(blk[0][k], dense[0][k], rtol=2e-5, err_msg=k)
