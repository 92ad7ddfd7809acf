"""Step metrics: window means -> absl log line, ``metrics.jsonl`` and TensorBoard; progress bar."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import tensorboardX  # pure-python writer: flax.metrics.tensorboard / clu need TensorFlow


_TB_ILLEGAL = re.compile(r"[^-/\w.]")  # what tensorboardX replaces, with an INFO log line each


def tb_tag(name: str) -> str:
  """A TensorBoard-legal tag for a metric name (data/issues/json/missing_field:text has ':')."""
  return _TB_ILLEGAL.sub("_", name).lstrip("/")


class MetricsLog:
  """Window means of the step metrics -> absl log line, metrics.jsonl and TensorBoard."""

  def __init__(self, config, workdir: str, schedule):
    self.schedule = schedule
    self.slots = config.data.batch_size * (config.data.l_txt + config.data.l_vis)
    self.primary = jax.process_index() == 0
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.primary else None
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb")) if self.primary else None
    self.pending: list[dict[str, jax.Array]] = []  # device metrics of the current window
    self.window_start = None  # wall time after the first (compiling) step of the window
    self.timed_steps = 0
    self.compile_s = None

  def drop_after(self, step: int) -> None:
    """Keeps metrics.jsonl's records up to ``step`` (the step a resume restored): the steps
    after it are recomputed, and must not appear twice. A line cut by a kill goes too."""
    if not self.primary:
      return
    self.jsonl.close()
    path = self.jsonl.name
    keep = []
    with open(path) as f:
      for line in f:
        try:
          if json.loads(line)["step"] <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
          continue  # torn by a kill mid-write
    with open(path + ".tmp", "w") as f:  # atomic: a kill now leaves the old file or the new
      f.writelines(keep)
    os.replace(path + ".tmp", path)
    self.jsonl = open(path, "a")

  def add(self, metrics: dict[str, jax.Array], compiled_now: float | None) -> None:
    self.pending.append(metrics)
    if compiled_now is not None:  # first step: its time is compile time, not throughput
      self.compile_s = compiled_now
      self.window_start = time.perf_counter()
    else:
      self.timed_steps += 1

  def pause(self, seconds: float) -> None:
    """Leaves ``seconds`` of non-step work (e.g. a checkpoint save) out of the throughput."""
    if self.window_start is not None:
      self.window_start += seconds

  def flush(self, step: int, extra: dict[str, float] | None = None) -> dict[str, Any]:
    """Fetches the window (blocks on the device), writes it; ``step`` = steps completed.
    ``extra``: host-side metrics to write with it (the data pipeline's ``data/*`` counters)."""
    host = jax.device_get(self.pending)
    now = time.perf_counter()
    rec = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    real = float(sum(m.get("n_real_tokens", 0.0) for m in host[-self.timed_steps:])
                 ) if self.timed_steps else 0.0
    elapsed = now - self.window_start if self.timed_steps else 0.0
    rec.update(step=step, lr=float(self.schedule(step - 1)),
               real_frac=rec.get("n_real_tokens", 0.0) / self.slots)
    if self.timed_steps:
      rec.update(step_time_s=elapsed / self.timed_steps, tokens_per_s=real / elapsed)
    if self.compile_s is not None:
      rec["compile_s"] = self.compile_s
    rec.update(extra or {})
    self._write(rec)
    self.pending, self.timed_steps, self.compile_s = [], 0, None
    self.window_start = time.perf_counter()
    return rec

  def _write(self, rec: dict[str, Any]) -> None:
    g = lambda k: rec.get(k, float("nan"))  # noqa: E731
    # A window of only the (compiling) first step of a run or a resume has no throughput.
    timing = (f"{rec['step_time_s']:.3f}s/step  {rec['tokens_per_s']:.0f} tok/s"
              if "step_time_s" in rec else "timing n/a (compile step)")
    logging.info(
        "step %d  loss %.4f  text %.4f  flow %.4f  lr %.2e  |g| %.3f  %s"
        "  real %.2f%s%s", rec["step"], g("loss"), g("text_loss"), g("flow_loss"), g("lr"),
        g("grad_norm"), timing, g("real_frac"),
        f"  (first step incl. compile {rec['compile_s']:.1f}s)" if "compile_s" in rec else "",
        f"  SKIPPED {rec['skipped']:.0%} (non-finite)" if rec.get("skipped") else "")
    if "data/docs_read" in rec:
      logging.info("%s", data_line(rec))
    if not self.primary:
      return
    self.jsonl.write(json.dumps(rec) + "\n")
    self.jsonl.flush()
    for k, v in rec.items():
      if k != "step":
        self.tb.add_scalar(tb_tag(f"train/{k}"), v, rec["step"])
    self.tb.flush()

  def close(self) -> None:
    if self.primary:
      self.jsonl.close()
      self.tb.close()


def data_line(rec: dict[str, Any]) -> str:
  """One log line of the data counters (cumulative): documents read / packed, efficiency,
  per source, and the issues by reason."""
  def group(prefix):
    items = sorted((k[len(prefix):], int(v)) for k, v in rec.items() if k.startswith(prefix))
    return ", ".join(f"{k} {v}" for k, v in items)
  out = (f"data  read {int(rec['data/docs_read'])}  packed {int(rec.get('data/docs_packed', 0))}"
         f"  eff txt {rec.get('data/eff_txt', float('nan')):.2f}"
         f" vis {rec.get('data/eff_vis', float('nan')):.2f}")
  sources = group("data/source_docs/")
  if sources:
    out += f"  sources: {sources}"
  issues = group("data/issues/")
  return out + (f"  issues: {issues}" if issues else "")


def progress(total: int, initial: int):
  if jax.process_index() != 0 or not sys.stderr.isatty():
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
