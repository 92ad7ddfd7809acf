"""Data pipeline throughput: documents/s, rows/s and packing efficiency of the real Grain graph
(mogao_jax.data.pipeline.make_pipeline + packing_stats), on the host only (no model).

  python -m benchmarks.pipeline [--config experiments/tiny_cpu.py] [--batches 20]

The first batch is not timed (it fills the shuffle buffer and the read threads' prefetch); the
tokenizer is trained once into --workdir and loaded afterwards.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import common
from benchmarks.step import REPO, load_config
from mogao_jax.data import pipeline


def measure(config, workdir: str, batches: int = 20, name: str = "") -> dict:
  it = pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir))
  next(it)
  before = dict(pipeline.packing_stats(it))
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  after = pipeline.packing_stats(it)
  docs = after["docs_packed"] - before["docs_packed"]
  rows = batches * config.data.batch_size
  return {"config": name, "batch": config.data.batch_size, "batches": batches,
          "l_txt": config.data.l_txt, "l_vis": config.data.l_vis, "seconds": dt,
          "examples/s": docs / dt, "rows/s": rows / dt, "batches/s": batches / dt,
          "docs/row": after["docs_packed"] / max(after["rows"], 1),
          "eff_txt": after["efficiency"]["txt"], "eff_vis": after["efficiency"]["vis"],
          "dropped_oversize": after["dropped_oversize"], "read_threads":
          config.data.get("read_threads", 2), "workers": config.data.get("num_workers", 0)}


COLUMNS = ["config", "batch", "batches", "l_txt", "l_vis", "seconds", "examples/s", "rows/s",
           "batches/s", "docs/row", "eff_txt", "eff_vis", "dropped_oversize", "read_threads",
           "workers"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", action="append", help="experiment file[:arg]; repeatable")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--workdir", default=str(REPO / "runs" / "bench"), help="tokenizer cache")
  args = p.parse_args(argv)
  specs = args.config or ["experiments/tiny_cpu.py", "experiments/tiny_cpu.py:res=16"]
  rows = [measure(load_config(s), args.workdir, args.batches, s.partition(":")[2] or "default")
          for s in specs]
  print(common.header("Data pipeline (host only)"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
