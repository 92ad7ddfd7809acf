"""The flash kernel under a mesh: it runs inside shard_map over the batch and head axes (XLA
cannot partition a Pallas kernel), so on 8 simulated CPU devices (data 2 x fsdp 2 x tensor 2,
the tiny config's rules: batch over data and fsdp, heads and kv heads over tensor) outputs
and gradients equal the unsharded kernel's (interpret mode)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from tests import test_flash as tf
from tests.configs import tiny_config


def _rows4():
  """Four rows: the mixed pair twice (the batch splits 4 ways)."""
  meta = tf._meta("mixed")
  return jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]], axis=0), meta)


def test_sharded_equals_unsharded():
  meta = _rows4()
  qkv, w, _ = tf._qkv(meta, heads=4, kv_heads=2, seed=5)

  def loss_and_out(q, k, v):
    out = tf._flash(meta, q, k, v, 16)
    return (out.astype(jnp.float32) * w).sum(), out

  step = jax.jit(jax.value_and_grad(loss_and_out, (0, 1, 2), has_aux=True))
  (_, ref), g_ref = step(*qkv)
  c = tiny_config()
  c.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
  mesh = mesh_lib.make_mesh(c)
  rules = rules_lib.make_rules(c, mesh)
  with rules_lib.activate(mesh, rules):
    text = jax.jit(jax.value_and_grad(loss_and_out, (0, 1, 2), has_aux=True)).trace(
        *qkv).lower().as_text()
    (_, out), g = jax.jit(jax.value_and_grad(loss_and_out, (0, 1, 2), has_aux=True))(*qkv)
  assert "shard_map" in text or "manual" in text  # the kernel ran per shard
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **tf.TOL)
  for a, r, name in zip(g, g_ref, "qkv"):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), err_msg=f"d{name}", **tf.TOL)
