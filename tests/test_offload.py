"""train.offload_opt_state: Adam's state waits in pinned host memory between steps, and the
numbers do not change."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from mogao_jax.train import loop
from tests import shardkit
from tests.configs import tiny_config


def _config(offload):
  c = tiny_config()
  c.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 4, "tensor": 1})
  c.train.offload_opt_state = offload
  return c


@pytest.mark.slow  # keeps the default suite under 20 min cold on 2 cores; CI runs -m slow
def test_offloaded_step_matches_and_stays_on_host(tmp_path):
  batches = shardkit.global_batches(_config(False), 2, str(tmp_path))
  ref, ref_state = shardkit.run_steps(_config(False), batches)
  got, state = shardkit.run_steps(_config(True), batches)
  for a, b in zip(got, ref):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
  kinds = {x.sharding.memory_kind for x in jax.tree.leaves(state.opt_state)}
  assert kinds == {"pinned_host"}
  assert {x.sharding.memory_kind for x in jax.tree.leaves(state.params)} == {"device"}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state.params, ref_state.params)


@pytest.mark.slow  # ~52 s; # keep the default suite under 20 min cold on 2 cores; CI runs -m slow too
def test_offloaded_run_saves_and_resumes(tmp_path):
  c = _config(True)
  c.train.update(steps=2, ckpt_every=1)
  loop.train(c, str(tmp_path))
  c.train.update(steps=3, allow_config_change=True)  # a longer run: an allowed change
  loop.train(c, str(tmp_path))  # restores step 2 (device shardings), moves Adam state to host
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3]
