"""Sharding goldens: every parameter's mesh PartitionSpec per experiment config, stored in
tests/golden/sharding_<config>.json and compared, so a changed rule, logical name or parameter
shows up as a reviewed diff instead of a silent layout change on the pod.

All configs are placed on the same (data 2, fsdp 2, tensor 2) mesh of the 8 simulated devices
with their own mesh.rules; nothing is compiled (abstract init + the rules only).

Regenerate after an intended change, then review the JSON diff:
  MOGAO_UPDATE_GOLDENS=1 python -m pytest tests/test_sharding_goldens.py
"""

import json
import os

import jax
import ml_collections
import pytest

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import report
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao
from mogao_jax.data import batch as batch_lib
from tests.configs import REPO, load_config

GOLDEN_DIR = REPO / "tests" / "golden"
CONFIGS = ("tiny_cpu", "mogao_7b_v5p", "mogao_1b_8gpu")
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def _json_spec(spec):
  """A PartitionSpec as JSON: one entry per dimension, null / "axis" / ["axis", ...]."""
  return [a if a is None or isinstance(a, str) else list(a) for a in spec]


def parameter_specs(name: str) -> dict:
  c = load_config(REPO / "experiments" / f"{name}.py")
  c.mesh.shape = ml_collections.ConfigDict(MESH)
  mesh = mesh_lib.make_mesh(c, jax.devices()[:8])
  rules = rules_lib.make_rules(c, mesh)
  model = Mogao.from_config(c)
  tx, _ = optim_lib.make_optimizer(c)
  specs = step_lib.state_logical_specs(c, model, tx, batch_lib.example_batch(c, batch_size=1))
  shardings = rules_lib.logical_to_sharding(specs.params, mesh, rules)
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  path_of = report._path  # pylint: disable=protected-access
  return {"mesh": MESH, "rules": [[r[0], list(r[1]) if isinstance(r[1], tuple) else r[1]]
                                  for r in rules],
          "params": {path_of(p): _json_spec(s.spec) for p, s in flat}}


def _dumps(golden: dict) -> str:
  """JSON with one line per parameter, so a layout change is a one-line diff per parameter."""
  params = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                       for k, v in sorted(golden["params"].items()))
  return (f'{{\n "mesh": {json.dumps(golden["mesh"])},\n "rules": {json.dumps(golden["rules"])},'
          f'\n "params": {{\n{params}\n }}\n}}\n')


@pytest.mark.parametrize("name", CONFIGS)
def test_sharding_matches_golden(name):
  got = parameter_specs(name)
  path = GOLDEN_DIR / f"sharding_{name}.json"
  if os.environ.get("MOGAO_UPDATE_GOLDENS") == "1":
    path.write_text(_dumps(got))
    pytest.skip(f"rewrote {path.relative_to(REPO)}")
  assert path.exists(), f"no golden {path}: run with MOGAO_UPDATE_GOLDENS=1 to create it"
  want = json.loads(path.read_text())
  diff = [f"{k}: golden {want['params'].get(k)} now {got['params'].get(k)}"
          for k in sorted(set(want["params"]) | set(got["params"]))
          if want["params"].get(k) != got["params"].get(k)]
  assert not diff and want["rules"] == got["rules"], (
      f"sharding of {name} differs from {path.name} ({len(diff)} parameters; rerun with"
      " MOGAO_UPDATE_GOLDENS=1 if intended):\n" + "\n".join(diff[:20]))


def test_the_siglip_tower_shards_like_the_rest():
  """Its kernels carry logical axes: under FSDP each is split over fsdp (before, all 0.4B
  parameters of the so400m-sized tower were replicated on every device)."""
  params = parameter_specs("mogao_7b_v5p")["params"]
  tower = {k: v for k, v in params.items() if k.startswith("vit/")}
  kernels = {k: v for k, v in tower.items() if k.endswith(("kernel", "position_embedding"))}
  assert len(kernels) == 27 * 6 + 2  # 6 per layer, + patch kernel and position table
  assert all("fsdp" in json.dumps(v) for v in kernels.values()), kernels
  assert not [k for k, v in tower.items() if all(a is None for a in v)]  # nothing replicated
