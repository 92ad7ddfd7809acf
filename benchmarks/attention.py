"""The joint attention alone: dense vs blockwise vs flash, forward + backward, by slots per row.

  python -m benchmarks.attention [--slots 2048,8192,32768] [--impl dense,blockwise,flash]
      [--heads 16 --kv_heads 8 --head_dim 128 --block 128 --dtype bfloat16 --repeats 10]

A row of packed interleaved documents (documents of ~1k slots: a prompt, then a 256-patch
image with its CVAE and NVAE copies, in turns), the mask of model/masks.py. Reports the median
time of jax.grad of sum(attention * w) (forward + backward), XLA's compiled temporaries (the
memory the dense path's L x L mask and scores take), the visible fraction of the mask and of
the (query block, key block) tiles. On CPU "flash" runs in Pallas interpret mode: its times
there mean nothing (correctness only, RESULTS.md says so); the GPU rows are the point. A
size whose dense program would not fit is skipped with its estimate (--max_dense_gib).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from mogao_jax.data.batch import Kind
from mogao_jax.model import attention, layers, masks

OTHER = masks.parse_table("1100,1100,1110,1110")
SAME = masks.parse_table("0000,0100,0110,0001")
COLUMNS = ["impl", "slots", "heads", "dtype", "ms", "ms_min", "temp_MiB", "mask_density",
           "tiles_visited"]


def packed_row(slots: int, prompt: int = 64, grid: int = 16) -> dict:
  """Metadata [1, slots] of documents (prompt tokens, one image: CVAE then NVAE copy, a few
  answer tokens) packed one after another; the tail is padding."""
  seg, kind, image, t = (np.zeros(slots, np.int32) for _ in range(4))
  at, doc, n = 0, 1, grid * grid
  while at + prompt + 2 * n + 8 <= slots:
    parts = [(Kind.TXT, 0, np.arange(prompt))]
    parts += [(Kind.CVAE, 1, np.full(n, prompt)), (Kind.NVAE, 1, np.full(n, prompt))]
    parts += [(Kind.TXT, 0, prompt + 1 + np.arange(8))]
    for k, img, ts in parts:
      sl = slice(at, at + len(ts))
      seg[sl], kind[sl], image[sl], t[sl] = doc, int(k), img * doc, ts
      at += len(ts)
    doc += 1
  pos = np.stack([t, 0 * t, 0 * t], -1)
  return {"segment": jnp.asarray(seg[None]), "kind": jnp.asarray(kind[None]),
          "image": jnp.asarray(image[None]), "pos": jnp.asarray(pos[None])}


def _fn(impl, meta, block):
  if impl == "dense":
    return lambda q, k, v: layers.attention(q, k, v, masks.visibility(meta, meta, OTHER, SAME))
  fn = attention.flash_attention if impl == "flash" else attention.blockwise_attention
  return functools.partial(lambda q, k, v: fn(q, k, v, meta, meta, other=OTHER, same=SAME,
                                              block_q=block, block_k=block))


def measure(impl, slots, heads, kv_heads, head_dim, block, dtype, repeats) -> dict:
  meta = packed_row(slots)
  rng = np.random.default_rng(0)
  arr = lambda h: jnp.asarray(rng.normal(size=(1, slots, h, head_dim)), dtype)  # noqa: E731
  q, k, v, w = arr(heads), arr(kv_heads), arr(kv_heads), arr(heads)
  f = _fn(impl, meta, block)
  grad = jax.jit(jax.grad(lambda q, k, v: (f(q, k, v).astype(jnp.float32) * w).sum(), (0, 1, 2)))
  compiled = grad.lower(q, k, v).compile()
  t = common.time_fn(compiled, q, k, v, repeats=repeats)
  l = -(-slots // block) * block
  pm = attention.pad_meta(meta, l)
  tiles = attention.block_map(pm, pm, OTHER, SAME, block, block)
  density = float(masks.visibility(meta, meta, OTHER, SAME).mean())
  return {"impl": impl, "slots": slots, "heads": heads, "dtype": jnp.dtype(dtype).name,
          "ms": 1e3 * t["median"], "ms_min": 1e3 * t["min"],
          "temp_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20,
          "mask_density": density,
          "tiles_visited": float(tiles.mean()) if impl != "dense" else 1.0}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--slots", default="2048,8192,32768")
  p.add_argument("--impl", default="dense,blockwise,flash")
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv_heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=128)
  p.add_argument("--block", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--max_dense_gib", type=float, default=40.0,
                 help="skip a dense size whose f32 scores + probabilities exceed this")
  args = p.parse_args(argv)
  rows = []
  for slots in (int(s) for s in args.slots.split(",")):
    for impl in args.impl.split(","):
      dense_gib = 3 * args.heads * slots * slots * 4 / 2**30  # scores, probs, their grads
      if impl == "dense" and dense_gib > args.max_dense_gib:
        print(f"skip dense at {slots} slots: ~{dense_gib:.0f} GiB of scores > --max_dense_gib")
        continue
      rows.append(measure(impl, slots, args.heads, args.kv_heads, args.head_dim, args.block,
                          jnp.dtype(args.dtype), args.repeats))
  print(common.header(f"joint attention fwd+bwd (heads {args.heads}/{args.kv_heads}, "
                      f"head_dim {args.head_dim}, block {args.block}, {args.dtype})"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
