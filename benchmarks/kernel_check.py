"""The flash kernel against dense attention in bf16 on random packed rows (forward + backward):
the correctness half of benchmarks/device_check.sh, for the device it runs on (Pallas Triton on
a GPU, interpret mode on a CPU).

  python -m benchmarks.kernel_check [--slots 2048 --rows 2 --heads 16 --kv_heads 8
      --head_dim 128 --block 128 --seed 0]

Rows: benchmarks.attention.packed_row with a random prompt length and image grid per row.
Both sides take the same bf16 q, k, v; dense computes in f32 on the L x L mask. Reported: the
largest error of the output on real slots and of dq, dk, dv, each relative to the largest
value of the reference; PASS when all are under --tol (bf16 has 8 bits of mantissa: ~4e-3 per
rounding; 2e-2 leaves room for the probabilities' rounding inside the kernel).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import attention as bench_attention
from benchmarks import common
from mogao_jax.model import attention, layers, masks


def random_rows(rows: int, slots: int, rng) -> dict:
  """Metadata [rows, slots] of packed documents, prompt length and image grid drawn per row."""
  grids = [g for g in (4, 8, 16) if 2 * g * g + 136 <= slots]  # one document fits
  metas = [bench_attention.packed_row(slots, prompt=int(rng.integers(8, 128)),
                                      grid=int(rng.choice(grids)))
           for _ in range(rows)]
  return {f: jnp.concatenate([m[f] for m in metas]) for f in metas[0]}


def check(meta, heads, kv_heads, head_dim, block, seed=0) -> dict:
  b, l = meta["segment"].shape
  rng = np.random.default_rng(seed)
  arr = lambda n: jnp.asarray(rng.normal(size=(b, l, n, head_dim)), jnp.bfloat16)  # noqa: E731
  q, k, v = arr(heads), arr(kv_heads), arr(kv_heads)
  real = np.asarray(meta["segment"] > 0)
  w = jnp.asarray(rng.normal(size=(b, l, heads, head_dim)) * real[:, :, None, None],
                  jnp.float32)
  mask = masks.visibility(meta, meta, bench_attention.OTHER, bench_attention.SAME)
  dense = lambda q, k, v: layers.attention(  # noqa: E731
      *(x.astype(jnp.float32) for x in (q, k, v)), mask)
  flash = lambda q, k, v: attention.flash_attention(  # noqa: E731
      q, k, v, meta, meta, other=bench_attention.OTHER, same=bench_attention.SAME,
      block_q=block, block_k=block)
  run = lambda f: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda q, k, v: (f(q, k, v).astype(jnp.float32) * w).sum(), (0, 1, 2)))
  out_f, out_d = jax.jit(flash)(q, k, v), jax.jit(dense)(q, k, v)
  (_, g_f), (_, g_d) = run(flash)(q, k, v), run(dense)(q, k, v)
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  rel = lambda a, r: float(np.abs(f32(a) - f32(r)).max() / max(np.abs(f32(r)).max(), 1e-30))  # noqa
  row = {"device": jax.devices()[0].device_kind, "rows": b, "slots": l,
         "out_err": rel(np.asarray(out_f, np.float32)[real], np.asarray(out_d)[real])}
  row.update({f"d{n}_err": rel(a, r) for n, a, r in zip("qkv", g_f, g_d)})
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--slots", type=int, default=2048)
  p.add_argument("--rows", type=int, default=2)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv_heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=128)
  p.add_argument("--block", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tol", type=float, default=2e-2)
  a = p.parse_args(argv)
  meta = random_rows(a.rows, a.slots, np.random.default_rng(a.seed))
  row = check(meta, a.heads, a.kv_heads, a.head_dim, a.block, a.seed)
  worst = max(v for k, v in row.items() if k.endswith("_err"))
  row["verdict"] = "PASS" if worst < a.tol else "FAIL"
  print(common.header("flash vs dense, bf16, random packed rows"))
  print(common.table([row]))
  print(f"RESULT kernel_check {row['verdict']} worst relative error {worst:.3g} (tol {a.tol})")
  return 0 if row["verdict"] == "PASS" else 1


if __name__ == "__main__":
  raise SystemExit(main())
