"""The train step gives the same numbers on one device and on a 2x2x2 (data, fsdp, tensor) mesh
of 8 simulated devices: sharding changes where the math runs, not the math."""

import jax
import ml_collections
import numpy as np
import pytest

from mogao_jax.data import pipeline
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from tests.conftest import tiny_config


def _run_step(config, devices, local_batch):
  mesh = mesh_lib.make_mesh(config, devices=devices)
  rules = rules_lib.make_rules(config, mesh)
  model = step_lib.make_model(config)
  tx, _ = optim_lib.make_optimizer(config)
  with rules_lib.activate(mesh, rules):
    bsh = rules_lib.batch_sharding(mesh, rules)
    batch = {k: jax.device_put(v, bsh) for k, v in local_batch.items()}
    specs = step_lib.state_logical_specs(config, model, tx, batch)
    shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
    state = jax.jit(lambda k, b: step_lib.init_state(config, model, tx, k, b),
                    out_shardings=shardings)(jax.random.key(0), batch)
    step = jax.jit(step_lib.make_train_step(config, model, tx),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, None))
    state, metrics = step(state, batch)
    qk = state.params["stack"]["layers"]["txt"]["q_proj"]["kernel"]
    return jax.device_get(metrics), np.asarray(qk), qk.sharding


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  c = tiny_config()
  c.model.num_kv_heads = 2  # so kv heads split over tensor=2
  tok = pipeline.make_tokenizer(c, str(tmp_path_factory.mktemp("tok")))
  local = next(pipeline.make_pipeline(c, tok))
  one = c.copy_and_resolve_references()
  one.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
  eight = c.copy_and_resolve_references()
  eight.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
  return (_run_step(one, jax.devices()[:1], local), _run_step(eight, jax.devices(), local))


def test_same_losses_and_update(results):
  (m1, qk1, _), (m8, qk8, sh8) = results
  for k in ("loss", "text_loss", "flow_loss", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, err_msg=k)  # float32 reduction order
  np.testing.assert_allclose(qk8, qk1, rtol=1e-4, atol=1e-6)


def test_params_are_really_sharded(results):
  _, (_, _, sh8) = results
  # q_proj kernel [layers, embed, heads, kv]: embed over fsdp, heads over tensor.
  assert tuple(sh8.spec)[:3] == (None, "fsdp", "tensor")
  assert len(sh8.device_set) == 8
