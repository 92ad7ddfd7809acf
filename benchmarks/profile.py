"""Where the train step's time goes: a JAX profiler trace of the real jitted step, its ops
grouped by the part of the model they belong to, next to the host pipeline's time per batch.

  python -m benchmarks.profile [--config experiments/tiny_cpu.py] [--steps 5]

How: the step is compiled ahead of time (benchmarks.step.compile_step) and run `--steps` times
under `jax.profiler.trace`. Every op the runtime executes appears in the trace with its HLO name
(`hlo_op`); the compiled HLO text maps that name to the op_name metadata JAX and Flax attach
(the named scopes: `jvp(Mogao)/stack/.../vis.ffn/mlp`, `transpose(...)` for the backward), and
PARTS below sorts op_names into parts. A fusion is charged to the op_name XLA kept for it (its
root), so a part's share is good to a few percent, not exactly. The time is summed over the
runtime's threads (ops of a step can run side by side), so the column is thread-ms per step,
and its total can exceed the step's wall time. The host row is the time to make one packed
batch in this process (the loop makes the next batch while the step runs: async dispatch).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax

from benchmarks import common
from benchmarks.step import REPO, compile_step, load_config, pipeline_batch, time_steps
from mogao_jax import sweep

# (part, op_name pattern), first match wins. The backward of a part is under transpose(...),
# so one pattern covers both directions; fwd/bwd are split by that prefix.
PARTS = (
    ("vit (understanding encoder + connector)", r"image_features|/vit/|connector"),
    ("lm head + text loss", r"lm_head|txt_head|log_softmax|cross_entropy|text_loss"),
    ("timestep conditioning (t embed, t_mod)", r"conditioning|t_mod|time_condition"),
    ("output heads (final norms, t_final, flow head)", r"_heads|vis_head|t_final"),
    ("layers: MLP (SwiGLU)", r"stack/.*ffn/mlp"),
    ("layers: q/k/v/o projections", r"stack/.*(q_proj|k_proj|v_proj|o_proj)"),
    ("layers: norms (input, post-attn, q/k)", r"stack/.*(layernorm|q_norm|k_norm)"),
    ("layers: attention (scores, mask, softmax, PV)", r"(stack|layers)/.*(BNTS|BTNS|BSNH|vmap"
                                                       r"|mask|softmax|attention)"),
    ("layers: rest (adaLN modulate, RoPE, residuals)", r"stack/"),
    ("embeddings + stream assembly", r"_embed|embed_|Embed|jvp\(Mogao\)/concatenate"),
    ("loss + flow noise (t, eps draws)", r"_normal|_uniform|threefry|loss|flow"),
    ("unnamed (scan buffer inits, layout copies)", r"^$"),
    ("optimizer (Adam, clip, EMA, finite checks)", r""),
)
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTR = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = [^(]*?\w+\(([^)]*)\)(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"(?:calls|body|to_apply)=%([\w.\-]+)")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the op_name it is charged to: its own metadata; for a fusion
  without one, the first op_name inside the computation it calls; for a copy / bitcast
  without one, its first operand's (layout copies carry no metadata)."""
  own, calls, operands, inside = {}, {}, {}, {}
  comp = None
  for line in hlo_text.splitlines():
    if (m := _COMP.match(line)):
      comp = m.group(1)
      continue
    if not (m := _INSTR.match(line)):
      continue
    name, args, rest = m.groups()
    operands[name] = re.findall(r"%([\w.\-]+)", args)
    if (o := _OP_NAME.search(rest)):
      own[name] = o.group(1)
      inside.setdefault(comp, o.group(1))
    if (c := _CALLS.search(rest)):
      calls[name] = c.group(1)

  def resolve(name, depth=0):
    if name in own or depth > 8:
      return own.get(name, "")
    if name in calls and calls[name] in inside:
      return inside[calls[name]]
    return next((r for a in operands.get(name, ()) if (r := resolve(a, depth + 1))), "")

  return {name: resolve(name) for name in operands}


def part_of(op_name: str) -> str:
  for part, pattern in PARTS:
    if re.search(pattern, op_name):
      return part
  raise AssertionError("the last pattern matches everything")


def trace_ops(step, state, batch, steps: int, trace_dir: str | None = None):
  """(microseconds per HLO op name summed over `steps` traced steps, the state after them);
  the trace is kept in `trace_dir` if given (for TensorBoard / Perfetto)."""
  state, metrics = step(state, batch)
  common.block(metrics)
  with tempfile.TemporaryDirectory() as tmp:
    d = trace_dir or tmp
    with jax.profiler.trace(d):
      for _ in range(steps):
        state, metrics = step(state, batch)
        common.block((state.step, metrics))
    (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.Counter()
  for e in events:
    hlo = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and hlo:
      per_op[hlo] += e["dur"]
  return per_op, state


def profile(config, steps: int = 5, workdir: str = str(REPO / "runs" / "bench"),
            trace_dir: str | None = None) -> list[dict]:
  """Rows: part, fwd / bwd / total thread-ms per step and share; then the step's wall time and
  the host pipeline's time per batch."""
  from mogao_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = pipeline_batch(config, workdir)
  dev_batch = jax.device_put(batch)
  step, state = compile_step(config, dev_batch)
  names = op_names(step.as_text())
  per_op, state = trace_ops(step, state, dev_batch, steps, trace_dir)
  parts = collections.defaultdict(lambda: [0.0, 0.0])
  for hlo, us in per_op.items():
    name = names.get(hlo, "")
    parts[part_of(name)]["transpose(" in name] += us / steps / 1e3
  total = sum(sum(v) for v in parts.values())
  rows = [{"part": p, "fwd_ms": parts[p][0], "bwd_ms": parts[p][1],
           "total_ms": sum(parts[p]), "share": sum(parts[p]) / total}
          for p, _ in PARTS if p in parts]
  rows.sort(key=lambda r: -r["total_ms"])
  rows.append({"part": "all ops (thread-ms)", "total_ms": total, "share": 1.0})
  wall = statistics.median(time_steps(step, state, dev_batch, steps))
  rows.append({"part": "step wall time", "total_ms": 1e3 * wall})
  it = pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir))
  next(it)  # fills the read threads' prefetch
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  rows.append({"part": "host: one packed batch (overlaps the step)",
               "total_ms": 1e3 * (time.perf_counter() - t0) / steps})
  return rows


COLUMNS = ["part", "fwd_ms", "bwd_ms", "total_ms", "share"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="experiments/tiny_cpu.py")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override (e.g. model.attention=flash)")
  p.add_argument("--trace_dir", default=None, help="keep the profiler trace here")
  a = p.parse_args(argv)
  print(common.header(f"benchmarks.profile {a.config}"))
  config = load_config(a.config)
  sweep.apply_overrides(config, sweep.parse_set(a.set), where="--set: ")
  print(common.table(profile(config, a.steps, trace_dir=a.trace_dir), COLUMNS))


if __name__ == "__main__":
  main()
