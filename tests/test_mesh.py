"""Mesh shapes and logical-axis rules on 8 simulated CPU devices (see conftest.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib


def _with_shape(config, **shape):
  config.mesh.shape = ml_collections.ConfigDict(shape)
  return config


def test_eight_devices():
  assert jax.device_count() == 8


def test_fill_minus_one(config):
  mesh = mesh_lib.make_mesh(_with_shape(config, data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_names == ("data", "fsdp", "tensor")  # canonical order, not alphabetical


def test_pairs_keep_their_order():
  names, sizes = mesh_lib.resolve_mesh_shape((("tensor", 2), ("data", -1)), 8)
  assert names == ("tensor", "data") and sizes == (2, 4)


@pytest.mark.parametrize("shape, needle", [
    (dict(data=-1, fsdp=3), "3"),
    (dict(data=2, fsdp=2), "4 devices, but there are 8"),
    (dict(data=-1, fsdp=-1), "only one axis"),
    (dict(data=0), "mesh.shape.data"),
])
def test_bad_shapes_name_the_key(config, shape, needle):
  with pytest.raises(ValueError, match="mesh.shape") as e:
    mesh_lib.make_mesh(_with_shape(config, **shape))
  assert needle in str(e.value)


def test_rules_to_named_sharding(config):
  mesh = mesh_lib.make_mesh(_with_shape(config, data=-1, fsdp=2, tensor=2))
  rules = rules_lib.make_rules(config, mesh)
  tree = {"w": P("embed", "mlp"), "b": P("mlp"), "x": P("batch", "length", "embed")}
  got = rules_lib.logical_to_sharding(tree, mesh, rules)
  assert got["w"] == NamedSharding(mesh, P("fsdp", "tensor"))
  assert got["b"] == NamedSharding(mesh, P("tensor"))
  # 'batch' takes data+fsdp first, so 'embed' (also fsdp) falls back to replicated.
  assert got["x"] == NamedSharding(mesh, P(("data", "fsdp"), None, None))
  assert rules_lib.batch_sharding(mesh, rules) == NamedSharding(mesh, P(("data", "fsdp")))
  assert rules_lib.batch_size_divisor(mesh, rules) == 4


def test_unknown_mesh_axis_in_rules(config):
  mesh = mesh_lib.make_mesh(config)
  config.mesh.rules = (("batch", "data"), ("heads", "model"))
  with pytest.raises(ValueError, match=r"mesh.rules\[1\].*'model'"):
    rules_lib.make_rules(config, mesh)


def test_activate_applies_logical_constraints(config):
  mesh = mesh_lib.make_mesh(_with_shape(config, data=-1, fsdp=1, tensor=1))
  rules = rules_lib.make_rules(config, mesh)

  @jax.jit
  def f(x_BD):
    return nn.with_logical_constraint(x_BD * 2, ("batch", "embed"))

  with rules_lib.activate(mesh, rules):
    y = f(jnp.ones((8, 4)))
  # batch over data (x8), embed replicated
  assert y.addressable_shards[0].data.shape == (1, 4)


def test_distributed_is_opt_in(config):
  assert not mesh_lib.maybe_initialize_distributed(config)


def test_batch_not_dividing_data_times_fsdp_fails_at_start(config, tmp_path):
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = _with_shape(config, data=2, fsdp=4, tensor=1)
  config.data.batch_size = 12
  with pytest.raises(ValueError, match=r"data.batch_size = 12 does not split over the 8 devices"):
    loop.train(config, str(tmp_path))
