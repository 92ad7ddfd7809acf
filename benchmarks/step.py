"""Train-step time, tokens/s and MFU of the real jitted train step on one device.

  python -m benchmarks.step [--config experiments/tiny_cpu.py:size=tiny] [--repeats 5]
  python -m benchmarks.step --long      # dense vs blockwise vs flash on long rows (res=64)
  python -m benchmarks.step --config experiments/mogao_1b_8gpu.py --no_xla_count \
      --set data.batch_size=8 --set data.vocab_size=256 --set model.latent_dim=768
      # --set: any config key, for every config measured (here: one GPU's share of the batch,
      # the world's tokenizer and pixel patches; RESULTS.md section 8)

MFU = analytic model FLOPs per step (benchmarks/flops.py, real slots and the mask's real
density) / step time / peak; on CPU the peak is the measured f32 matmul rate of this process.
"padded MFU" counts what the dense program executes (every slot, full L x L attention): the
gap between the two is what padding and masked-out attention cost. XLA's own count of the
compiled step (cost_analysis) is shown next to the padded count as a cross-check (not for
model.attention = "blockwise" or "flash": their block loops are while loops, whose bodies XLA
counts once; flash on CPU is Pallas interpret mode, a correctness path, not a speed one).
`temp_MiB` is XLA's compiled memory analysis of the step: its temporaries (activations, the
attention mask and scores), the number the blockwise attention shrinks on long rows.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import numpy as np

from benchmarks import common, flops
from mogao_jax import config_args, sweep
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("text_pathway", "vision_pathway", "attention", "vit", "lm_head")


def load_config(spec: str):
  """'path.py[:arg]' -> get_config(arg) (experiments/ is not a package)."""
  path, _, arg = spec.partition(":")
  return config_args.load_experiment(REPO / path).get_config(arg or None)


def load_configs(specs: list[str], sets: list[str]) -> list[tuple[str, object]]:
  """(row name, config) per spec, each with the ``--set key=value`` overrides applied (an
  unknown key or a wrong type fails here, naming the key)."""
  overrides = sweep.parse_set(sets)
  out = []
  for spec in specs:
    config = load_config(spec)
    sweep.apply_overrides(config, overrides, where="--set: ")
    out.append((" ".join([spec.partition(":")[2] or pathlib.Path(spec).stem] + sets), config))
  return out


def pipeline_batch(config, workdir: str) -> dict:
  """One real packed batch (real packing density and mask density)."""
  from mogao_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return next(pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir)))


def compile_step(config, batch):
  """(compiled step, initial state) on the default device (compiled ahead of time, so its
  memory_analysis() is at hand)."""
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  state = jax.jit(lambda k, b: step_lib.init_state(config, model, tx, k, b))(
      jax.random.key(config.seed), batch)
  step = jax.jit(step_lib.make_train_step(config, model, tx), donate_argnums=0).lower(
      state, batch).compile()
  return step, state


def xla_flops(config, batch) -> float:
  """XLA's FLOP count of the compiled step. cost_analysis counts a while loop's body once, so
  with scan_layers it would see 1 of `depth` layers: count an unscanned copy instead (the same
  computation, only unrolled; this compile is for the count, it is not timed)."""
  if config.model.get("attention", "dense") in ("blockwise", "flash"):
    return float("nan")
  if config.model.scan_layers:
    config = config.copy_and_resolve_references()
    config.model.scan_layers = False
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  state = jax.eval_shape(lambda k, b: step_lib.init_state(config, model, tx, k, b),
                         jax.random.key(0), batch)
  cost = jax.jit(step_lib.make_train_step(config, model, tx)).lower(state, batch).compile(
      ).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def time_steps(step, state, batch, repeats: int, warmup: int = 1) -> list[float]:
  """Seconds per step; the state is threaded through (it is donated, so it cannot be reused)."""
  for _ in range(warmup):
    state, metrics = step(state, batch)
  common.block(metrics)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    common.block((state.step, metrics))
    times.append(time.perf_counter() - t0)
  return times


def measure(config, batch: dict, repeats: int = 5, peak: tuple[float, str] | None = None,
            name: str = "", xla_count: bool = True) -> dict:
  """One results row for `config` on `batch` (numpy)."""
  mcfg = ModelConfig.from_config(config.model)
  real = flops.step_flops(batch, mcfg)
  dense = flops.step_flops(batch, mcfg, padded=True)
  c = flops.counts(batch, mcfg)
  dev_batch = jax.device_put(batch)
  step, state = compile_step(config, dev_batch)
  temp = step.memory_analysis().temp_size_in_bytes
  # The count compiles an unrolled copy of the step: minutes for a 24-layer model.
  xla = xla_flops(config, dev_batch) if xla_count else float("nan")
  times = time_steps(step, state, dev_batch, repeats)
  t = statistics.median(times)
  peak_rate, peak_what = peak or common.peak_flops()
  row = {"config": name, "attention": mcfg.attention, "temp_MiB": temp / 2**20,
         "rows": c["rows"], "slots": c["rows"] * (c["l_txt"] + c["l_vis"]),
         "real_tokens": c["txt"] + c["vis"], "step_ms": 1e3 * t,
         "step_ms_min": 1e3 * min(times), "tokens/s": (c["txt"] + c["vis"]) / t,
         "model_GFLOP": real["total"] / 1e9, "padded_GFLOP": dense["total"] / 1e9,
         "xla_GFLOP": xla / 1e9, "xla/padded": xla / dense["total"],
         "GFLOP/s": real["total"] / t / 1e9, "peak_GFLOP/s": peak_rate / 1e9,
         "MFU": real["total"] / t / peak_rate, "padded_MFU": dense["total"] / t / peak_rate,
         "peak": peak_what, "mask_density": c["pairs"] / (c["rows"] * (c["l_txt"]
                                                                        + c["l_vis"]) ** 2)}
  row.update({f"share_{p}": real[p] / real["total"] for p in PARTS})
  row["blocks_computed"] = (block_fraction(batch, mcfg, per_row=mcfg.attention == "flash")
                            if mcfg.attention in ("blockwise", "flash") else 1.0)
  return row


def block_fraction(batch: dict, mcfg, per_row: bool = False) -> float:
  """Fraction of (query block, key block) pairs the blockwise attention computes (the rest
  is skipped as invisible in every row of the batch); per_row: the flash kernel's, which
  skips per row."""
  from mogao_jax.model import attention, masks  # pylint: disable=g-import-not-at-top
  meta = masks.joint_metadata(batch)
  n = mcfg.attention_block
  l = -(-meta["segment"].shape[1] // n) * n
  bmap = attention.block_map(
      attention.pad_meta(meta, l), attention.pad_meta(meta, l),
      masks.parse_table(mcfg.mask_other), masks.parse_table(mcfg.mask_same), n, n)
  return float(np.asarray(bmap).mean() if per_row else np.asarray(bmap).any(0).mean())


MAIN_COLUMNS = ["config", "rows", "real_tokens", "slots", "mask_density", "step_ms",
                "step_ms_min", "tokens/s", "model_GFLOP", "padded_GFLOP", "xla_GFLOP",
                "xla/padded", "GFLOP/s", "peak_GFLOP/s", "MFU", "padded_MFU"]
SHARE_COLUMNS = ["config"] + [f"share_{p}" for p in PARTS]
LONG_COLUMNS = ["config", "attention", "rows", "slots", "mask_density", "blocks_computed",
                "step_ms", "step_ms_min", "tokens/s", "temp_MiB", "MFU"]
# Long rows (64 px images: 768 + 768 slots), the dense mask and scores against the blockwise
# attention; a small batch keeps the dense step within the CPU's memory and patience.
LONG = [f"experiments/tiny_cpu.py:size=tiny,res=64,batch=4,attn={a}"
        for a in ("dense", "blockwise", "flash")]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", action="append",
                 help="experiment file[:arg]; repeatable (default: tiny_cpu micro/tiny/small)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--long", action="store_true",
                 help="dense vs blockwise attention on long rows (the LONG configs)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override applied to every config (e.g. model.dtype=bfloat16)")
  p.add_argument("--no_xla_count", action="store_true",
                 help="skip XLA's FLOP count (it compiles an unrolled copy of the step)")
  p.add_argument("--workdir", default=str(REPO / "runs" / "bench"), help="tokenizer cache")
  args = p.parse_args(argv)
  specs = args.config or (LONG if args.long else [f"experiments/tiny_cpu.py:size={s}"
                                                   for s in ("micro", "tiny", "small")])
  peak = common.peak_flops()
  rows = []
  for name, config in load_configs(specs, args.set):
    rows.append(measure(config, pipeline_batch(config, args.workdir), args.repeats, peak,
                        name=name, xla_count=not args.no_xla_count))
  print(common.header("Train step: time, tokens/s, MFU"))
  if args.long:
    print(common.table(rows, LONG_COLUMNS))
    return rows
  print(common.table(rows, MAIN_COLUMNS))
  print()
  print("Shares of the model FLOPs (fwd+bwd, real slots):\n")
  print(common.table(rows, SHARE_COLUMNS))
  return rows


if __name__ == "__main__":
  main()
