"""Memory per device versus mesh shape: XLA's compiled memory analysis of the real train step
(mogao_jax.train.dry_run.compile_step + summarize), no data and no step run.

  python -m benchmarks.memory [--config experiments/tiny_cpu.py:size=tiny] [--devices 8]

On a CPU host the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=N,
set here before JAX starts unless already given). Per-device FLOPs are XLA's count, which sees
one layer of a scanned stack (a while loop's body is counted once).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  _n = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "8"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={_n}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.step import load_config  # noqa: E402
from mogao_jax.train import dry_run  # noqa: E402

# (data, fsdp, tensor) for 8 devices; meshes that do not divide the model fail with a reason.
MESHES_8 = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (4, 1, 2), (1, 4, 2), (2, 2, 2))


def measure(config, shape) -> dict:
  c = config.copy_and_resolve_references()
  c.mesh.shape = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape)))
  row = {"mesh (data,fsdp,tensor)": "x".join(map(str, shape))}
  try:
    out = dry_run.summarize(*dry_run.compile_step(c, jax.devices()[:math.prod(shape)]))
  except Exception as e:  # pylint: disable=broad-except  (a mesh that does not fit: say why)
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return row
  mib = lambda g: g * 1024  # noqa: E731
  row.update({"params_MiB": out["params_total"] / 2**20,
              "params/dev_MiB": out["params_per_device"] / 2**20,
              "args/dev_MiB": mib(out.get("argument_gib", float("nan"))),
              "temp/dev_MiB": mib(out.get("temp_gib", float("nan"))),
              "peak/dev_MiB": mib(out.get("peak_gib", float("nan"))),
              "xla_GFLOP/dev": out["flops_per_step_per_device"] / 1e9, "error": ""})
  return row


COLUMNS = ["mesh (data,fsdp,tensor)", "params_MiB", "params/dev_MiB", "args/dev_MiB",
           "temp/dev_MiB", "peak/dev_MiB", "xla_GFLOP/dev", "error"]


def run(config, meshes=MESHES_8) -> list[dict]:
  return [measure(config, s) for s in meshes if math.prod(s) <= jax.device_count()]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="experiments/tiny_cpu.py:size=tiny")
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  args = p.parse_args(argv)
  rows = run(load_config(args.config))
  print(common.header(f"Memory per device vs mesh ({args.config})"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
