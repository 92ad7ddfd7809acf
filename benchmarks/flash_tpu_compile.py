"""Compile the TPU attention kernel (model/flash_tpu.py) for a TPU topology from a CPU host
and report XLA's memory_analysis and cost_analysis: no TPU is needed, no time is measured.

  JAX_PLATFORMS=cpu python -m benchmarks.flash_tpu_compile --topology v5p:2x2x1 \
      --slots 4096,16384,32768 [--rows 2 --heads 16 --kv_heads 2 --block 128]

Needs libtpu (the AOT venv: pip install -e ".[tpu]"). The kernel runs under shard_map over
the topology's devices (Mosaic kernels are not auto-partitioned), `--rows` rows per chip
(mogao_7b_v5p: 256 rows on 128 chips = 2), bf16, head_dim 128, every tile of the maps
visible except the upper triangle (a causal-shaped workload; shapes, not values, are what a
compile sees). optimal_seconds is XLA's roofline for the compiled program: a compiler
estimate, not a measurement.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mogao_jax.model import flash_tpu, masks

OTHER = masks.parse_table("1100,1100,1110,1110")
SAME = masks.parse_table("0000,0100,0110,0001")


def compile_kernel(topology: str, slots: int, *, rows: int = 2, heads: int = 16,
                   kv_heads: int = 2, head_dim: int = 128, block: int = 128,
                   backward: bool = True):
  """Compiled forward (+ backward: grads of q, k, v) for `topology`; returns a dict of
  memory / cost numbers per device and the compile time."""
  devices = topologies.get_topology_desc(topology, "tpu").devices
  mesh = Mesh(np.array(devices), ("rows",))
  n, nb = len(devices), slots // block
  kernel = flash_tpu.make(OTHER.tobytes(), SAME.tobytes(), block, block,
                          float(1 / np.sqrt(head_dim)), False)

  def attend(q, k, v, meta, vis, full):
    return kernel(q, k, v, meta, meta, vis, full)

  def per_device(q, k, v, meta, vis, full, w):
    if not backward:
      return attend(q, k, v, meta, vis, full)
    loss = lambda q, k, v: (attend(q, k, v, meta, vis, full).astype(jnp.float32) * w).sum()  # noqa: E731
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  spec = P("rows")
  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) * 7,
                     out_specs=(spec,) * 3 if backward else spec, check_vma=False)
  b = rows * n
  shard = NamedSharding(mesh, spec)
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=shard)  # noqa: E731
  args = (s((b, slots, heads, head_dim), jnp.bfloat16),
          s((b, slots, kv_heads, head_dim), jnp.bfloat16),
          s((b, slots, kv_heads, head_dim), jnp.bfloat16),
          s((b, 4, slots), jnp.int32), s((b, nb, nb), jnp.bool_), s((b, nb, nb), jnp.bool_),
          s((b, slots, heads, head_dim), jnp.bfloat16))
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - t0
  text = compiled.as_text()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      "devices": n, "device_kind": devices[0].device_kind, "compile_s": seconds,
      "mosaic_calls": text.count("tpu_custom_call"),
      "args_bytes": mem.argument_size_in_bytes, "out_bytes": mem.output_size_in_bytes,
      "temp_bytes": mem.temp_size_in_bytes,
      "flops": cost.get("flops"), "optimal_seconds": cost.get("optimal_seconds"),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--topology", default="v5p:2x2x1")
  p.add_argument("--slots", default="4096,16384,32768")
  p.add_argument("--rows", type=int, default=2)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--block", type=int, default=128)
  a = p.parse_args(argv)
  gib = 2.0 ** 30
  print("| topology | slots/row | pass | compiled | Mosaic calls | HBM args+out GiB | temp GiB "
        "| optimal_seconds (XLA estimate) | compile s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for slots in map(int, a.slots.split(",")):
    for backward in (False, True):
      r = compile_kernel(a.topology, slots, rows=a.rows, heads=a.heads, kv_heads=a.kv_heads,
                         block=a.block, backward=backward)
      print(f"| {a.topology} ({r['device_kind']}) | {slots} | {'fwd+bwd' if backward else 'fwd'}"
            f" | yes | {r['mosaic_calls']} | {(r['args_bytes'] + r['out_bytes']) / gib:.3f}"
            f" | {r['temp_bytes'] / gib:.3f} | {r['optimal_seconds']} | {r['compile_s']:.1f} |",
            flush=True)


if __name__ == "__main__":
  main()
