"""The train step gives the same numbers on one device and on every supported (data, fsdp,
tensor) mesh of 8 simulated devices: sharding changes where the math runs, not the math."""

import jax
import ml_collections
import numpy as np
import pytest

from tests import shardkit
from tests.configs import tiny_config


def _with_mesh(c, data, fsdp, tensor):
  c = c.copy_and_resolve_references()
  c.mesh.shape = ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})
  return c


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  c = tiny_config()
  c.model.num_kv_heads = 2  # so kv heads split over tensor=2
  batches = shardkit.global_batches(c, 2, str(tmp_path_factory.mktemp("tok")))
  return c, batches, shardkit.run_steps(_with_mesh(c, 1, 1, 1), batches, jax.devices()[:1])


@pytest.fixture(scope="module", params=[
    (8, 1, 1), (2, 2, 2),  # data only; data x fsdp x tensor. The rest in CI's slow step:
    pytest.param((2, 4, 1), marks=pytest.mark.slow), pytest.param((1, 4, 2), marks=pytest.mark.slow)],
                ids=lambda s: "x".join(map(str, s)))
def results(base, request):
  c, batches, single = base
  return single, shardkit.run_steps(_with_mesh(c, *request.param), batches, jax.devices())


def _q_proj(state):
  return state.params["stack"]["layers"]["txt"]["q_proj"]["kernel"]


def test_same_losses_and_update(results):
  (h1, s1), (h8, s8) = results
  for a, b in zip(h8, h1):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, err_msg=k)  # float32 reduction order
  np.testing.assert_allclose(np.asarray(_q_proj(s8)), np.asarray(_q_proj(s1)), rtol=1e-4,
                             atol=1e-6)


def test_params_are_really_sharded(base):
  c, batches, _ = base
  _, state = shardkit.run_steps(_with_mesh(c, 2, 2, 2), batches[:1], jax.devices())
  sh = _q_proj(state).sharding
  # q_proj kernel [layers, embed, heads, kv]: embed over fsdp, heads over tensor.
  assert tuple(sh.spec)[:3] == (None, "fsdp", "tensor")
  assert len(sh.device_set) == 8
