"""Shared pieces of the benchmarks: timing, the machine's peak FLOP rate, tables, provenance.

Every benchmark prints one markdown table (`table`) so RESULTS.md can paste it as printed.
Nothing here asserts on time: timings are reported, never tested.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip (vendor data sheets, no sparsity), by a substring of
# jax.Device.device_kind. First match wins, so more specific names come first.
BF16_PEAK = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v4", 275e12), ("TPU v3", 123e12),
)


def block(tree):
  return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x,
                      tree)


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> dict:
  """Median / min / max seconds of fn(*args) over `repeats` calls after `warmup` calls (which
  absorb compilation). fn's outputs are blocked on, so async dispatch is not mistaken for speed."""
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"median": statistics.median(times), "min": min(times), "max": max(times),
          "repeats": repeats}


def cpu_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a float32 n x n matmul in this process: the CPU's practical peak, the
  denominator of MFU on CPU (a data-sheet number would say nothing about these 2 cores)."""
  a = jnp.ones((n, n), jnp.float32)
  b = jnp.ones((n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  t = time_fn(dot, a, b, repeats=repeats)
  return 2 * n**3 / t["min"]  # min: the rate the hardware can reach, not the noise around it


def peak_flops(device=None, cpu_n: int = 1024) -> tuple[float, str]:
  """(peak FLOP/s, what it is) for the device the benchmark runs on."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return cpu_matmul_peak(cpu_n), f"measured f32 {cpu_n}^3 matmul"
  for name, peak in BF16_PEAK:
    if name.lower() in device.device_kind.lower():
      return peak, f"{device.device_kind} bf16 data sheet"
  return float("nan"), f"{device.device_kind}: unknown peak (add it to BF16_PEAK)"


def table(rows: list[dict], columns: list[str] | None = None) -> str:
  """A markdown table of dicts; floats with 4 significant digits."""
  columns = columns or list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def parse_table(text: str) -> list[dict]:
  """The inverse of `table` (strings): for tests and for collecting results."""
  lines = [l for l in text.strip().splitlines() if l.startswith("|")]
  cols = [c.strip() for c in lines[0].strip("|").split("|")]
  return [dict(zip(cols, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def machine() -> dict:
  """Provenance for RESULTS.md: CPU model, cores, load, versions, date."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  import flax  # pylint: disable=g-import-not-at-top
  return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "cpu": cpu, "cores": os.cpu_count(), "load_1m": os.getloadavg()[0],
          "device": jax.devices()[0].device_kind, "n_devices": jax.device_count(),
          "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version()}


def header(name: str) -> str:
  m = machine()
  return f"## {name}\n\n" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "\n"
