"""Reading an experiment config costs no JAX import: every experiment file, loaded in a fresh
interpreter (a sweep's get_sweep too), leaves `jax` out of sys.modules."""

import json
import pathlib
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]

_CODE = """
import json, pathlib, sys
from mogao_jax import config_args
out = {}
for path in sorted(pathlib.Path("experiments").glob("*.py")):
  module = config_args.load_experiment(path)
  module.get_config()
  if hasattr(module, "get_sweep"):
    module.get_sweep()
  out[path.name] = sorted(m for m in ("jax", "flax", "optax", "orbax") if m in sys.modules)
print(json.dumps(out))
"""


def test_experiment_configs_import_no_jax():
  r = subprocess.run([sys.executable, "-c", _CODE], cwd=_REPO, capture_output=True, text=True,
                     timeout=120, check=True)
  loaded = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(loaded) >= 4, loaded
  assert all(v == [] for v in loaded.values()), loaded
