"""Memory/layout knobs change how the model runs, never what it computes: remat policies and
scanned vs unrolled layers give the same loss and gradients."""

import functools

import jax
import numpy as np
import optax
import pytest

from mogao_jax.data import pipeline
from mogao_jax.train import step
from mogao_jax.model.mogao import Mogao
from mogao_jax.model import flow
from tests.configs import tiny_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  c = tiny_config()
  batch = next(pipeline.make_pipeline(c, pipeline.make_tokenizer(
      c, str(tmp_path_factory.mktemp("tok")))))
  params = step.init_state(c, Mogao.from_config(c), optax.sgd(0.0), jax.random.key(0),
                           batch).params
  noise = flow.draw_noise(jax.random.key(1), batch, c.flow)
  return c, batch, params, noise, _loss_and_grad(c, params, batch, noise)


def _loss_and_grad(c, params, batch, noise):
  fn = functools.partial(step.loss_fn, model=Mogao.from_config(c), batch=batch, t_BN=noise[0],
                         noise_BVC=noise[1], loss_cfg=c.loss)
  (loss, _), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
  return float(loss), grads


def _unstack(params, depth):
  """Scanned params (leading `layers` axis) -> the unrolled layout layers_0 .. layers_{n-1}."""
  stack = params["stack"]["layers"]
  unrolled = {f"layers_{i}": jax.tree_util.tree_map(lambda x: x[i], stack) for i in range(depth)}
  return {**params, "stack": unrolled}


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_match(reference, remat):
  c, batch, params, noise, (loss0, grads0) = reference
  c = c.copy_and_resolve_references()
  c.model.remat = remat
  loss, grads = _loss_and_grad(c, params, batch, noise)
  assert loss == pytest.approx(loss0, rel=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                         grads, grads0)


def test_unrolled_layers_match_scan(reference):
  c, batch, params, noise, (loss0, grads0) = reference
  c = c.copy_and_resolve_references()
  c.model.scan_layers = False
  loss, grads = _loss_and_grad(c, _unstack(params, c.model.depth), batch, noise)
  assert loss == pytest.approx(loss0, rel=1e-5)
  want = _unstack(grads0, c.model.depth)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         grads, want)


def test_bfloat16_compute_keeps_float32_master_weights(reference):
  c, batch, params, noise, (loss0, grads0) = reference
  c = c.copy_and_resolve_references()
  c.model.dtype = "bfloat16"
  loss, grads = _loss_and_grad(c, params, batch, noise)
  assert loss == pytest.approx(loss0, rel=2e-2)  # bf16 has an 8-bit mantissa
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(grads)}
  assert dtypes == {np.dtype(np.float32)}, dtypes  # grads land on the float32 params
  g, g0 = (optax.global_norm(x) for x in (grads, grads0))
  assert float(g) == pytest.approx(float(g0), rel=5e-2)
