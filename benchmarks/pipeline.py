"""Data pipeline throughput: documents/s, tokens/s (per core) and packing efficiency of the real
Grain graph (mogao_jax.data.pipeline.make_pipeline + packing_stats), on the host only (no model).

  python -m benchmarks.pipeline [--config experiments/tiny_cpu.py] [--batches 20]
                                [--web-docs 2000] [--no-web] [--profile]

Rows: each --config on the built-in world (default: tiny_cpu at 32 and 16 px), then a web-like
corpus (mogao_jax/data/sources/synthetic.py: long-tailed text length, 0-4 images per document of
varied aspect ratios and sizes, PNG/JPEG files; generated once into --workdir/web) read as JSONL
+ image files, as ArrayRecord (images inlined), as the TFDS interleaved_docs build, and as JSONL
with 2 Grain worker processes. The web rows use rows of 1024 + 512 slots and aspect-ratio
buckets (WEB_DATA below), decode every image with Pillow and resize it to its bucket.

Columns: ms/batch = wall time per batch; cpu_ms/batch = CPU time per batch of this process and
its Grain workers (user + system, all threads: what the batch takes from cores a train step
shares); examples/s = documents read per second (after the first batch, which fills the read
threads' prefetch); tokens/s = real (non-padding) slots of both streams per second;
tokens/s/core = tokens per CPU-second of this process and its Grain workers (user + system:
what one core would do); cpu_util = CPU-seconds per second (how many cores it kept busy).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

from benchmarks import common
from benchmarks.step import REPO, load_config
from mogao_jax.data import pipeline

# The web rows' data settings: rows long enough for web documents, buckets near the corpus's
# aspect ratios (1:1, 4:3, 3:4, 16:9, 9:16, 2:1, 1:2) at ~32 px (patch 4).
WEB_DATA = dict(l_txt=1024, l_vis=512, image_size=32,
                image_buckets=((32, 32), (28, 36), (36, 28), (24, 40), (40, 24), (20, 44),
                               (44, 20)))
WEB_VIT_GRID = 11  # 44 px / patch 4


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its live children (Grain workers)."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
  except ImportError:
    t = os.times()
    return t.user + t.system
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def _read(stats) -> int:
  by_source = stats.get("source_docs") or {}
  if by_source:
    return int(sum(by_source.values()))
  return int(stats["docs_packed"] + stats["dropped_oversize"] + stats["dropped_empty"])


def measure(config, workdir: str, batches: int = 20, name: str = "") -> dict:
  it = pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir))
  try:
    next(it)
    before = copy.deepcopy(pipeline.packing_stats(it))
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
      next(it)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    after = pipeline.packing_stats(it)
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
  docs = _read(after) - _read(before)
  tokens = (after["txt_real"] + after["vis_real"]) - (before["txt_real"] + before["vis_real"])
  rows = batches * config.data.batch_size
  issues = sum((after.get("issues") or {}).values())
  return {"config": name, "source": _source_label(config), "batch": config.data.batch_size,
          "batches": batches, "l_txt": config.data.l_txt, "l_vis": config.data.l_vis,
          "seconds": dt, "ms/batch": 1e3 * dt / batches, "cpu_ms/batch": 1e3 * cpu / batches,
          "examples/s": docs / dt, "rows/s": rows / dt, "tokens/s": tokens / dt,
          "tokens/s/core": tokens / max(cpu, 1e-9), "cpu_util": cpu / dt,
          "docs/row": after["docs_packed"] / max(after["rows"], 1),
          "eff_txt": after["efficiency"]["txt"], "eff_vis": after["efficiency"]["vis"],
          "dropped_oversize": after["dropped_oversize"], "issues": issues,
          "read_threads": config.data.get("read_threads", 2),
          "workers": config.data.get("num_workers", 0)}


def _source_label(config) -> str:
  from mogao_jax.data.sources import specs  # pylint: disable=g-import-not-at-top
  return "+".join(s.kind for s in specs.mixture(config.data))


COLUMNS = ["config", "source", "batch", "batches", "l_txt", "l_vis", "seconds", "ms/batch",
           "cpu_ms/batch", "examples/s",
           "rows/s", "tokens/s", "tokens/s/core", "cpu_util", "docs/row", "eff_txt", "eff_vis",
           "dropped_oversize", "issues", "read_threads", "workers"]


def web_corpus(workdir: str, n_docs: int, seed: int = 0) -> dict[str, str]:
  """The web-like corpus as JSONL + images, ArrayRecord and TFDS (built once, then reused)."""
  from mogao_jax.data.sources import arrayrecord  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.sources import jsonl  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.sources import synthetic  # pylint: disable=g-import-not-at-top
  from mogao_jax.data.sources import tfds_interleaved  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, f"web-{n_docs}-{seed}")
  docs = os.path.join(root, "docs")
  path = os.path.join(docs, "docs.jsonl")
  if not os.path.exists(path):
    synthetic.write_web_corpus(docs, n_docs, seed=seed)
  shards = os.path.join(root, "arrayrecord", "web")
  if not os.path.exists(f"{shards}-00000-of-00004.array_record"):
    src = jsonl.JsonlSource(path)
    def inlined():
      for i in range(len(src)):
        rec = src[i]
        parts = [p if p["type"] != "image" else
                 {"type": "image", "bytes": open(os.path.join(docs, p["path"]), "rb").read(),
                  "generate": p.get("generate", False)} for p in rec["parts"]]
        yield {**rec, "parts": parts}
    arrayrecord.write_shards(shards, inlined(), 4)
  tfds_dir = os.path.join(root, "tfds")
  tfds_interleaved.build(docs, tfds_dir)
  return {"jsonl": f"jsonl:{path}", "arrayrecord": f"arrayrecord:{shards}-*.array_record",
          "tfds": f"tfds:interleaved_docs?data_dir={tfds_dir}"}


def web_config(base, spec: str, workers: int = 0):
  c = base.copy_and_resolve_references()
  c.data.update(WEB_DATA)
  c.data.source = spec
  c.data.num_workers = workers
  c.model.vit_grid = WEB_VIT_GRID
  return c


# --profile: the host's stages, as (label, file, function) whose cProfile cumulative time is
# charged to them (sub-stages indented: part of the stage above).
STAGES = (("world documents (make_document)", "kinds.py", "make_document"),
          ("  rendering (render)", "render.py", "render"),
          ("  scenes, ops, texts (build_layout)", "kinds.py", "build_layout"),
          ("encoding (encode_document)", "encoding.py", "encode_document"),
          ("  tokenizer", "tokenizer.py", "encode"),
          ("  patchify", "images.py", "patchify"),
          ("packing (packer add)", "packing.py", "add"),
          ("Grain batch (stack rows)", "batch.py", "make_batch"))


def profile(config, workdir: str, batches: int = 40) -> list[dict]:
  """The pipeline made synchronous (no read threads: cProfile sees one thread), its CPU
  ms per batch without the profiler, then each stage's share of a profiled batch."""
  import cProfile  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  read_options = grain.ReadOptions
  pipeline.grain.ReadOptions = lambda **kw: read_options(**{**kw, "num_threads": 0})
  try:
    it = pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir))
  finally:
    pipeline.grain.ReadOptions = read_options
  next(it)
  c0 = time.process_time()
  for _ in range(batches):
    next(it)
  plain = (time.process_time() - c0) / batches
  prof = cProfile.Profile()
  prof.runcall(lambda: [next(it) for _ in range(batches)])
  prof.create_stats()
  def cum(fname, func):
    return sum(v[3] for (f, _, fn), v in prof.stats.items() if f.endswith(fname) and fn == func)
  total = sum(v[2] for v in prof.stats.values())  # every function's own time: the whole run
  rows = [{"stage": "one batch, no profiler (CPU)", "ms": 1e3 * plain, "share": 1.0}]
  rows.append({"stage": "one batch, profiled", "ms": 1e3 * total / batches, "share": 1.0})
  rows += [{"stage": label, "ms": 1e3 * cum(f, fn) / batches, "share": cum(f, fn) / total}
           for label, f, fn in STAGES]
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", action="append", help="experiment file[:arg]; repeatable")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--web-batches", type=int, default=10)
  p.add_argument("--web-docs", type=int, default=2000)
  p.add_argument("--no-web", action="store_true")
  p.add_argument("--profile", action="store_true",
                 help="instead: where a batch's host time goes (cProfile by stage, first --config)")
  p.add_argument("--workdir", default=str(REPO / "runs" / "bench"), help="tokenizer, corpus")
  args = p.parse_args(argv)
  specs = args.config or ["experiments/tiny_cpu.py", "experiments/tiny_cpu.py:res=16"]
  if args.profile:
    rows = profile(load_config(specs[0]), args.workdir, args.batches)
    print(common.header(f"Host stages of one batch ({specs[0]}, cProfile, synchronous)"))
    print(common.table(rows, ["stage", "ms", "share"]))
    return rows
  rows = [measure(load_config(s), args.workdir, args.batches, s.partition(":")[2] or "default")
          for s in specs]
  if not args.no_web:
    web = web_corpus(args.workdir, args.web_docs)
    base = load_config("experiments/tiny_cpu.py")
    for kind, workers in (("jsonl", 0), ("arrayrecord", 0), ("tfds", 0), ("jsonl", 2)):
      rows.append(measure(web_config(base, web[kind], workers), args.workdir, args.web_batches,
                          f"web {kind}" + (f", {workers} workers" if workers else "")))
  print(common.header("Data pipeline (host only)"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
