"""The dataset doctor: run the configured data pipeline over a source, without a model.

  python -m mogao_jax.data.check --config experiments/tiny_cpu.py \\
      [--source 'jsonl:/data/docs.jsonl?images=/data/img'] [--limit 1000] [--config.data.x=...]

Reads the first `--limit` documents (0, or more than the file sources have records: as many as
they have, one pass over a single source; the world is infinite, so then 1000) through the training graph
(pipeline.make_dataset with limit_docs: process 0 of 1, the config's mixture, buckets, row
capacities, workers; the open rows are flushed at the end), and prints: the sources
(records, weight), documents read per source, documents packed, rows, packing efficiency per
stream, and every skip (data dropped) and repair (data kept, fixed) by reason with a count and
the first example (a file path, `<file>:<line>` or `<doc id>/parts/<i>`). Run it before
spending pod hours on a new corpus. Exit status 1 when nothing could be packed.

`--source` replaces config.data.source and config.data.sources (spec syntax:
mogao_jax/data/sources/specs.py; several specs separated by `;`). The tokenizer is
config.data.tokenizer if set, else the world tokenizer, trained into `--workdir` (default: a
temporary folder).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from mogao_jax.data import encoding
from mogao_jax.data import pipeline
from mogao_jax.data import records
from mogao_jax.data.sources import specs as specs_lib
from mogao_jax import quiet_logs

WORLD_DEFAULT_LIMIT = 1000
_REPAIRS_FROM_PACKER = ("doc/truncated", "text/special_token_literal")


def with_source(config, source: str | None):
  """A copy of `config` reading `source` (spec string) instead of its configured sources."""
  c = config.copy_and_resolve_references()
  if source:
    with c.unlocked():
      if "sources" in c.data:
        del c.data["sources"]
      c.data.source = source
  return c


def is_repair(reason: str) -> bool:
  return records.is_repair(reason) or reason in _REPAIRS_FROM_PACKER


def _default_limit(mix) -> int:
  total = 0
  for s in mix:
    if s.kind == "world":
      return WORLD_DEFAULT_LIMIT
    total += len(specs_lib.open_source(s))
  return total


def run(config, *, source: str | None = None, limit: int = 1000,
        workdir: str | None = None) -> dict[str, Any]:
  """Runs the pipeline until `limit` documents were read; returns the report (a dict)."""
  config = with_source(config, source)
  mix = specs_lib.mixture(config.data)
  sources = []
  for s in mix:
    n = None if s.kind == "world" else len(specs_lib.open_source(s))
    sources.append({"name": s.name, "spec": s.text, "weight": s.weight, "records": n})
  one_pass = _default_limit(mix)
  if limit <= 0 or not any(s.kind == "world" for s in mix):
    # Files are read once: a larger limit would loop over them, counting each issue again.
    limit = one_pass if limit <= 0 else min(limit, one_pass)
  with tempfile.TemporaryDirectory() as tmp:
    tok = pipeline.make_tokenizer(config, workdir or tmp)
    it = iter(pipeline.make_dataset(config, tok, limit_docs=limit))
    t0, batches = time.perf_counter(), 0
    try:
      for _ in it:
        batches += 1
      stats = pipeline.packing_stats(it)
    finally:
      close = getattr(it, "close", None)
      if close:
        close()
  seconds = time.perf_counter() - t0
  return {"sources": sources, "limit": limit, "batches": batches, "seconds": seconds,
          "batch_size": config.data.batch_size, "l_txt": config.data.l_txt,
          "l_vis": config.data.l_vis, "stats": stats,
          "text_shares": pipeline.text_shares(stats, encoding.role_weights(config.data))}


def docs_read(stats: dict[str, Any]) -> int:
  by_source = stats.get("source_docs") or {}
  if by_source:
    return int(sum(by_source.values()))
  return int(stats["docs_packed"] + stats["dropped_oversize"] + stats["dropped_empty"])


def format_report(report: dict[str, Any]) -> str:
  st = report["stats"]
  lines = ["dataset doctor", "", "sources:"]
  w = max(len(s["name"]) for s in report["sources"])
  for s in report["sources"]:
    n = "procedural" if s["records"] is None else f"{s['records']} records"
    lines.append(f"  {s['name']:<{w}}  weight {s['weight']:<6g} {n:<16} {s['spec']}")
  read, packed = st.get("source_docs", {}), st.get("source_packed", {})
  lines += ["", f"documents read      {docs_read(st):>8}   (limit {report['limit']})"]
  for name in sorted(read):
    lines.append(f"  {name or 'world':<{max(w, 5)}}  read {read[name]:>7}   packed "
                 f"{packed.get(name, 0):>7}")
  rows = st["rows"]
  eff = st["efficiency"]
  lines += [
      f"documents packed    {st['docs_packed']:>8}",
      f"dropped             {st['dropped_oversize'] + st['dropped_empty']:>8}   (oversize "
      f"{st['dropped_oversize']}, empty or unusable {st['dropped_empty']})",
      f"rows packed         {rows:>8}   ({report['batches']} batches of up to {report['batch_size']};"
      f" {st['docs_packed'] / max(rows, 1):.2f} documents per row)",
      f"packing efficiency  text {eff['txt']:.3f} of {report['l_txt']} slots   vision "
      f"{eff['vis']:.3f} of {report['l_vis']} slots",
      f"time                {report['seconds']:.2f} s   ({docs_read(st) / max(report['seconds'], 1e-9):.0f}"
      " documents/s)",
  ]
  roles = sorted(st.get("text_tokens", {}).items(), key=lambda x: (-x[1], x[0]))
  if roles:  # text positions with a loss, and their share of it (data.text_loss_weights)
    shares = report.get("text_shares", {})
    lines.append("text loss by role   " + ", ".join(
        f"{r} {n} ({shares.get(r, 0.0):.0%})" for r, n in roles))
  issues, examples = st.get("issues", {}), st.get("issue_examples", {})
  for title, want in (("skips (data dropped)", False), ("repairs (data kept)", True)):
    found = sorted(((n, r) for r, n in issues.items() if is_repair(r) == want),
                   key=lambda x: (-x[0], x[1]))
    lines += ["", f"{title}: {sum(n for n, _ in found) if found else 'none'}"]
    if found:
      rw = max(len(r) for _, r in found)
      lines.append(f"  {'count':>7}  {'reason':<{rw}}  first example")
      for n, r in found:
        lines.append(f"  {n:>7}  {r:<{rw}}  {examples.get(r, '')}")
  return "\n".join(lines)


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  del argv
  cfg = config_flags.get_config_filename(flags.FLAGS["config"]) and flags.FLAGS.config
  report = run(cfg, source=flags.FLAGS.source, limit=flags.FLAGS.limit,
               workdir=flags.FLAGS.workdir)
  print(format_report(report))
  if report["stats"]["docs_packed"] == 0:
    sys.exit(1)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config_flags.DEFINE_config_file(
      "config", default=os.path.join(repo, "experiments", "tiny_cpu.py"),
      help_string="experiment config file[:args]; override with --config.data.key=value",
      lock_config=True)
  flags.DEFINE_string("source", None, "source spec(s) replacing config.data.source(s)")
  flags.DEFINE_integer("limit", 1000, "documents to read (0 = one pass over the file sources)")
  flags.DEFINE_string("workdir", None, "tokenizer cache (default: a temporary folder)")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  quiet_logs.install()
  _define_flags()
  app.run(main)
