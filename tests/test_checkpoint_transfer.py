"""Restore onto another mesh / device count, and params-only restore for fine-tuning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer
from mogao_jax.train import step as step_lib
from mogao_jax.train import transfer
from mogao_jax.train.state import TrainState
from mogao_jax.model.mogao import Mogao
from mogao_jax.data import batch as batch_lib


def _placed_state(config, devices):
  """The tiny model's real TrainState on a mesh over ``devices`` (config.mesh.shape)."""
  mesh = mesh_lib.make_mesh(config, devices)
  rules = rules_lib.make_rules(config, mesh)
  model, (tx, _) = Mogao.from_config(config), optimizer.make_optimizer(config)
  batch = batch_lib.example_batch(config, 1)
  with rules_lib.activate(mesh, rules):
    specs = step_lib.state_logical_specs(config, model, tx, batch)
    shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
    init = jax.jit(lambda k: step_lib.init_state(config, model, tx, k, batch),
                   out_shardings=shardings)
    return init(jax.random.key(0)), shardings


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x), tree)


@pytest.mark.slow  # two meshes' compiles (~40 s): keeps the default suite inside its 20 minutes
def test_restore_onto_other_mesh_and_device_count(config, tmp_path):
  """8 devices FSDP -> 4 devices tensor-parallel: same values, the new shardings."""
  config.train.ema_decay = 0.9  # the EMA travels with the params
  config.model.num_kv_heads = 2  # so that kv heads split over tensor = 2
  config.mesh.shape = {"data": 1, "fsdp": 8, "tensor": 1}
  state, _ = _placed_state(config, jax.devices())
  q = lambda s: s.params["stack"]["layers"]["vis"]["q_proj"]["kernel"]  # noqa: E731
  assert q(state).sharding.spec[1] == "fsdp"
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(3, state, {"pos": 3}, config)

  other = config.copy_and_resolve_references()
  other.mesh.shape = {"data": 2, "fsdp": 1, "tensor": 2}
  target, shardings = _placed_state(other, jax.devices()[:4])
  with ckpt_lib.Checkpointer(str(tmp_path), other) as ckpt:
    step, got, data = ckpt.restore_latest(
        ckpt_lib.abstract_with_shardings(target, shardings), other)
  assert (step, data) == (3, [{"pos": 3}])
  leaves = jax.tree_util.tree_leaves_with_path(got)
  assert all(len(x.sharding.device_set) == 4 for _, x in leaves)
  assert q(got).sharding == q(shardings) and q(got).sharding.spec[2] == "tensor"
  jax.tree.map(np.testing.assert_array_equal, _host(got), _host(state))
  assert got.ema is not None


def _save_params(config, tmp_path, params):
  tx, _ = optimizer.make_optimizer(config)
  state = TrainState(step=jnp.int32(5), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(0))
  with ckpt_lib.Checkpointer(str(tmp_path), config) as ckpt:
    ckpt.save(5, state, {}, config)


def test_params_only_restore_reports_differences(config, tmp_path):
  src = tmp_path / "pretrain"
  _save_params(config, src, {"a": {"k": jnp.full((4, 2), 3.0)}, "b": jnp.ones((3,)),
                             "old": jnp.ones((2,))})
  target = {"a": {"k": jnp.zeros((4, 2))}, "b": jnp.zeros((5,)), "new": jnp.zeros((1,))}
  got, report = transfer.load_params(str(src), target)
  np.testing.assert_array_equal(got["a"]["k"], np.full((4, 2), 3.0))  # matched: loaded
  np.testing.assert_array_equal(got["b"], np.zeros(5))  # mis-shaped: fresh init kept
  np.testing.assert_array_equal(got["new"], np.zeros(1))  # missing: fresh init kept
  assert report["matched"] == ["a.k"] and report["missing"] == ["new"]
  assert report["unexpected"] == ["old"]
  assert report["misshaped"] == ["b: (3,) in the checkpoint, (5,) here"]
  text = transfer.format_report(report)
  assert "step 5" in text and "unexpected: 1" in text and "    old" in text
  # A step dir works too; a dir without checkpoints is a clear error naming the key.
  assert transfer.load_params(str(src / "checkpoints" / "5"), target)[1] == report
  with pytest.raises(FileNotFoundError, match="init.params_from"):
    transfer.load_params(str(tmp_path / "nowhere"), target)
  with pytest.raises(ValueError, match="no parameter .* matches"):
    transfer.load_params(str(src), {"zzz": jnp.zeros((7,))})


def test_params_from_config_key_loads_params_and_ema(config, tmp_path):
  src = tmp_path / "pretrain"
  _save_params(config, src, {"a": jnp.full((2,), 5.0), "x": jnp.ones((3,))})
  fresh = {"a": jnp.zeros((2,)), "y": jnp.zeros((1,))}
  state = TrainState(step=jnp.int32(0), params=fresh, opt_state=(), rng=jax.random.key(0),
                     ema=fresh)
  config.init.params_from = str(src)
  got = transfer.apply_to_state(config, state, str(tmp_path))
  for tree in (got.params, got.ema):
    np.testing.assert_array_equal(tree["a"], [5.0, 5.0])
    np.testing.assert_array_equal(tree["y"], [0.0])
  text = (tmp_path / "params_from.txt").read_text()
  assert "missing: 1\n    y" in text and "unexpected: 1\n    x" in text
  config.init.params_key = "ema"  # this checkpoint has none: a clear error
  with pytest.raises(ValueError, match="holds no 'ema'"):
    transfer.apply_to_state(config, state, str(tmp_path))
