"""Reading an experiment config costs no JAX import: every experiment file, loaded in a fresh
interpreter (a sweep's get_sweep too), leaves `jax` out of sys.modules."""

import json
import pathlib
import subprocess
import sys

from tests import partskit

_REPO = pathlib.Path(__file__).resolve().parents[1]

# Experiments that need a config argument, with one (a parts directory of configs only).
_ARGS = {"tiny_latent.py": "parts={parts}", "mogao_from_parts.py": "parts={parts}"}
_CODE = """
import json, pathlib, sys
from mogao_jax import config_args
args = json.loads(sys.argv[1])
out = {}
for path in sorted(pathlib.Path("experiments").glob("*.py")):
  module = config_args.load_experiment(path)
  module.get_config(args.get(path.name))
  if hasattr(module, "get_sweep"):
    module.get_sweep()
  out[path.name] = sorted(m for m in ("jax", "flax", "optax", "orbax") if m in sys.modules)
print(json.dumps(out))
"""


def test_experiment_configs_import_no_jax(tmp_path):
  parts = partskit.config_only_parts(tmp_path)
  args = {k: v.format(parts=parts) for k, v in _ARGS.items()}
  r = subprocess.run([sys.executable, "-c", _CODE, json.dumps(args)], cwd=_REPO,
                     capture_output=True, text=True, timeout=120, check=True)
  loaded = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(loaded) >= 5, loaded
  assert all(v == [] for v in loaded.values()), loaded
