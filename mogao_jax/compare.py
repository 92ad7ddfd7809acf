"""``python -m mogao_jax.compare ROOT``: one table of the runs under ROOT.

A run is any directory under ROOT (up to 3 levels) holding a ``metrics.jsonl``. Per run: its
overrides (``overrides.json`` written by the sweep; else the config keys that differ between the
runs), final and best loss, final text / flow loss, throughput (median over the logged windows),
the status from the run card, and the world scores (``overall`` per kind) of its newest
``eval/step_<N>/eval.json``. Writes ``ROOT/compare.csv``, ``ROOT/compare_loss.png`` (loss curves,
drawn with Pillow) and TensorBoard hparams under ``ROOT/tb_hparams`` (``tensorboard --logdir
ROOT/tb_hparams``, HPARAMS tab).

Learning curves: every ``eval/step_<N>/eval.json`` of a run (``evaluate --checkpoint_step N``
on the checkpoints that ``train.keep_every`` kept) is a point of score per skill
(`scorer.skills`) against training minutes: the sum of the logged step times up to step N plus
the first compile (checkpoint saves and evals are not counted). ``ROOT/compare_skills.png``
draws them, a panel per skill, and the printed table lists them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import sys
from typing import Any

from mogao_jax import plot
from mogao_jax import trees
from mogao_jax.eval import scorer

_MAX_DEPTH = 3
_CURVES = ("loss", "text_loss", "flow_loss")


def find_runs(root: str) -> list[str]:
  """Run directories under ``root`` (relative paths, sorted); ``root`` itself if it is one."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    depth = 0 if rel == "." else rel.count(os.sep) + 1
    if "metrics.jsonl" in filenames:
      found.append(rel)
      dirnames[:] = []  # a run's own subdirectories are not runs
    elif depth >= _MAX_DEPTH:
      dirnames[:] = []
    dirnames[:] = sorted(d for d in dirnames if d not in ("checkpoints", "tb", "tb_hparams"))
  return sorted(found)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Records by step; a resumed run appends, so the last record of a step wins."""
  by_step = {}
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill
        continue
      if "step" in rec:
        by_step[rec["step"]] = rec
  return [by_step[s] for s in sorted(by_step)]


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def latest_eval(workdir: str) -> dict[str, float]:
  """kind -> overall score of the newest ``eval/step_<N>/eval.json`` (empty if none)."""
  for step in reversed(eval_steps(workdir)):
    result = _read_json(os.path.join(workdir, "eval", f"step_{step}", "eval.json"))
    if result:
      return {f"eval_{k}": v["overall"] for k, v in sorted(result.get("summary", {}).items())
              if isinstance(v, dict) and "overall" in v}
  return {}


def eval_steps(workdir: str) -> list[int]:
  """Steps with an ``eval/step_<N>/eval.json``, ascending."""
  base = os.path.join(workdir, "eval")
  if not os.path.isdir(base):
    return []
  return sorted(int(d[5:]) for d in os.listdir(base) if d.startswith("step_") and d[5:].isdigit()
                and os.path.exists(os.path.join(base, d, "eval.json")))


def train_minutes(records: list[dict[str, Any]]) -> dict[int, float]:
  """step -> minutes of training up to it: each logged window's step time x its steps, plus
  the first window's compile."""
  out, total, prev = {}, 0.0, 0
  for r in records:
    total += r.get("step_time_s", 0.0) * (r["step"] - prev) + r.get("compile_s", 0.0)
    out[r["step"]], prev = total / 60, r["step"]
  return out


def skill_curve(workdir: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per evaluated step: {"step", "minutes", skill: score, ...}."""
  minutes = train_minutes(records)
  points = []
  for step in eval_steps(workdir):
    summary = _read_json(os.path.join(workdir, "eval", f"step_{step}", "eval.json"))["summary"]
    logged = [s for s in minutes if s <= step]
    points.append({"step": step, "minutes": minutes[max(logged)] if logged else 0.0,
                   **scorer.skills(summary)})
  return points


def _differing(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per run: the config keys whose values are not the same in every run."""
  flat = {name: trees.flatten(c) for name, c in configs.items()}
  keys = sorted({k for f in flat.values() for k in f})
  diff = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat.values()}) > 1]
  return {name: {k: f.get(k) for k in diff} for name, f in flat.items()}


def summarize(root: str, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
  workdir = os.path.join(root, name)
  row: dict[str, Any] = {"run": name, "steps": records[-1]["step"] if records else 0}
  losses = [(r["loss"], r["step"]) for r in records if _finite(r.get("loss"))]
  if losses:
    row["final_loss"] = records[-1].get("loss")
    row["best_loss"], row["best_step"] = min(losses)
  for k in ("text_loss", "flow_loss"):
    if records and k in records[-1]:
      row[f"final_{k}"] = records[-1][k]
  for k in ("tokens_per_s", "step_time_s"):
    vals = [r[k] for r in records if _finite(r.get(k))]
    if vals:
      row[k] = statistics.median(vals)
  card = _read_json(os.path.join(workdir, "run_card.json"))
  if card:
    row["status"] = card.get("status")
  row.update(latest_eval(workdir))
  return row


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


def collect(root: str) -> tuple[list[dict[str, Any]], list[str], dict[str, list]]:
  """(rows, override column names, run -> metric records)."""
  names = find_runs(root)
  if not names:
    raise FileNotFoundError(f"no runs (directories with metrics.jsonl) under {root}")
  records = {n: read_metrics(os.path.join(root, n, "metrics.jsonl")) for n in names}
  overrides = {n: _read_json(os.path.join(root, n, "overrides.json")) for n in names}
  if any(o is None for o in overrides.values()):  # not (all) from one sweep: diff the configs
    configs = {n: _read_json(os.path.join(root, n, "config.json")) or {} for n in names}
    overrides = _differing(configs)
  keys = list(dict.fromkeys(k for o in overrides.values() for k in o))
  rows = []
  for n in names:
    row = {k: overrides[n].get(k) for k in keys}
    row.update(summarize(root, n, records[n]))
    rows.append(row)
  return rows, keys, records


def _fmt(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
  return str(v)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
  """A plain-text table (the run name first)."""
  cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
  line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(x) for x in cells])


def columns_of(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
  order = ["run", *keys, "steps", "final_loss", "best_loss", "best_step", "final_text_loss",
           "final_flow_loss", "tokens_per_s", "step_time_s", "status"]
  extra = sorted({k for r in rows for k in r if k.startswith("eval_")})
  present = {k for r in rows for k in r}
  return [c for c in order if c in present] + extra


def write_csv(path: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def write_hparams(logdir: str, rows: list[dict[str, Any]], keys: list[str]) -> None:
  """TensorBoard's HPARAMS view: one session per run (the overrides vs the metrics)."""
  import tensorboardX  # pylint: disable=g-import-not-at-top
  shutil.rmtree(logdir, ignore_errors=True)  # ours alone; a rerun must not duplicate sessions
  with tensorboardX.SummaryWriter(logdir) as writer:
    for r in rows:
      hp = {k: _hparam(r.get(k)) for k in keys} or {"run": r["run"]}
      metrics = {f"hparam/{k}": float(v) for k, v in r.items()
                 if k not in keys and k not in ("run", "steps") and _finite(v)}
      writer.add_hparams(hp, metrics, name=r["run"].replace(os.sep, "_"))


def _hparam(v: Any):
  return v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)


def compare(root: str, *, hparams: bool = True) -> dict[str, Any]:
  """Prints nothing; returns the table text and the paths written."""
  rows, keys, records = collect(root)
  cols = columns_of(rows, keys)
  out = {"rows": rows, "columns": cols, "table": table(rows, cols),
         "csv": os.path.join(root, "compare.csv"), "png": os.path.join(root, "compare_loss.png")}
  write_csv(out["csv"], rows, cols)
  curves = {k: {n: [(r["step"], r[k]) for r in recs if _finite(r.get(k))]
                for n, recs in records.items()} for k in _CURVES}
  plot.line_panels(out["png"], {k: v for k, v in curves.items() if any(v.values())},
                   title=f"runs under {root}")
  skill_curves = {n: skill_curve(os.path.join(root, n), recs) for n, recs in records.items()}
  out["skill_curves"] = {n: c for n, c in skill_curves.items() if c}
  if out["skill_curves"]:
    names = list(dict.fromkeys(k for c in out["skill_curves"].values() for p in c for k in p
                               if k not in ("step", "minutes")))
    out["skills_png"] = os.path.join(root, "compare_skills.png")
    plot.line_panels(out["skills_png"], {
        k: {n: [(p["minutes"], p[k]) for p in c if k in p] for n, c in out["skill_curves"].items()}
        for k in names}, title=f"skills vs training minutes, runs under {root}",
        x_label="minutes")
    points = [{"run": n, **p} for n, c in out["skill_curves"].items() for p in c]
    out["skills_table"] = table(points, ["run", "step", "minutes", *names])
  if hparams:
    out["hparams"] = os.path.join(root, "tb_hparams")
    write_hparams(out["hparams"], rows, keys)
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m mogao_jax.compare ROOT", file=sys.stderr)
    return 2
  try:
    out = compare(argv[1])
  except FileNotFoundError as e:
    print(f"compare: {e}", file=sys.stderr)
    return 1
  print(out["table"])
  if out.get("skills_table"):
    print("\nskills vs training minutes\n" + out["skills_table"])
  print(f"\nwrote {out['csv']}, {out['png']}, TensorBoard hparams in {out['hparams']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
