"""Checkpoint round trip (state + data iterator state) and the config guard."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer
from mogao_jax.train.state import TrainState


def _small_state(config, mesh):
  tx, _ = optimizer.make_optimizer(config)
  k1, k2 = jax.random.split(jax.random.key(1))
  params = {"kernel": jax.random.normal(k1, (8, 4)), "bias": jax.random.normal(k2, (4,))}
  state = TrainState(step=jnp.int32(7), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(3))
  rows = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda x: rows if x.ndim == 2 else rep, state)
  return jax.device_put(state, shardings), shardings


def _assert_equal(a, b):
  a = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, a)
  b = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(config, tmp_path):
  mesh = mesh_lib.make_mesh(config)
  state, shardings = _small_state(config, mesh)
  data_state = {"epoch": 2, "offsets": [3, 5], "name": "world"}
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    assert ckpt.latest_step() is None
    ckpt.save(7, state, data_state, config)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), config)
  assert ckpt.latest_step() == 7
  abstract = ckpt_lib.abstract_with_shardings(state, shardings)
  got, got_data = ckpt.restore(7, abstract, config)
  ckpt.close()
  _assert_equal(got, state)
  assert got_data == data_state
  assert got.params["kernel"].sharding == shardings.params["kernel"]


def test_keep_checkpoints(config, tmp_path):
  config.train.keep_checkpoints = 2
  mesh = mesh_lib.make_mesh(config)
  state, _ = _small_state(config, mesh)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, {}, config)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3]


def test_other_model_config_is_refused(config, tmp_path):
  mesh = mesh_lib.make_mesh(config)
  state, shardings = _small_state(config, mesh)
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(1, state, {}, config)
  other = config.copy_and_resolve_references()
  other.model.width = 64
  other.train.steps = 99  # not a model key: allowed to differ
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    with pytest.raises(ValueError, match=r"model\.width: 32 -> 64") as e:
      ckpt.restore(1, ckpt_lib.abstract_with_shardings(state, shardings), other)
  assert "train.steps" not in str(e.value)
