"""The 7B train step at long rows, compiled for a TPU slice from a CPU host: memory per chip
by attention implementation and slots per row (issue 33 item 5). Compile only, nothing runs.

  JAX_PLATFORMS=cpu python -m benchmarks.long_rows --attention flash \
      --slots 4096,16384,32768 [--topology v5p-256 --config experiments/mogao_7b_v5p.py]

Each row is mogao_7b_v5p with model.attention = --attention and rows of S slots (S / 2 text,
S / 2 vision), batch max(chips, 2**20 / S) rows (the config's 1M tokens per step while there
is a row per chip, one row per chip after that), through the dry run (train/dry_run.py).
Needs libtpu; each compile takes ~10 minutes and ~10 GB of host memory on 2 cores (and 20-60
under load). Prints a markdown row per length (peak = arguments + temporaries + outputs -
aliased, per chip), or the error where the compile fails (e.g. a kernel refused, or HBM
exceeded), with parallel/estimate.py's analytic figure beside it. --estimate_only prints the
analytic column alone (seconds, no libtpu): an estimate (+-30%), never a compile.
"""

from __future__ import annotations

import argparse
import time

from mogao_jax import config_args
from mogao_jax.parallel import estimate
from mogao_jax.train import dry_run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--attention", default="flash")
  p.add_argument("--slots", default="4096,16384,32768")
  p.add_argument("--topology", default="v5p-256")
  p.add_argument("--config", default="experiments/mogao_7b_v5p.py")
  p.add_argument("--estimate_only", action="store_true",
                 help="the analytic estimate only (parallel/estimate.py), no compile")
  a = p.parse_args(argv)
  topo = dry_run.topology_name(a.topology)
  chips = 1
  for n in topo.split(":")[1].split("x"):
    chips *= int(n)
  print("| attention | slots/row | rows/step | args GiB | temp GiB | peak GiB/chip | of HBM |"
        " compile s | estimate GiB/chip | optimal_seconds (XLA) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for slots in map(int, a.slots.split(",")):
    config = config_args.load_experiment(a.config).get_config()
    config.model.attention = a.attention
    config.data.l_txt, config.data.l_vis = slots // 2, slots - slots // 2
    config.data.batch_size = max(chips, 2**20 // slots)
    config.dry_run_topology = a.topology
    est = f"{estimate.memory_per_device(config, chips)['gib']['total']:.2f}"
    head = f"| {a.attention} | {slots} | {config.data.batch_size} |"
    if a.estimate_only:
      print(f"{head} - | - | - | - | - | {est} | - |", flush=True)
      continue
    t0 = time.perf_counter()
    try:
      out = dry_run.run(config)
    except Exception as e:  # noqa: BLE001  a row per length, failures included
      print(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} ||||| {est} | - |",
            flush=True)
      continue
    print(f"{head} {out['argument_gib']:.2f} | {out['temp_gib']:.2f} | {out['peak_gib']:.2f}"
          f" | {out.get('peak_of_hbm', float('nan')):.2f} | {time.perf_counter() - t0:.0f}"
          f" | {est} | {out['optimal_seconds']:.4g} |", flush=True)


if __name__ == "__main__":
  main()
