"""ECTF versus the naive scheme: forward + backward time for one document with N generated
images.

  python -m benchmarks.ectf_scaling [--config experiments/tiny_cpu.py:size=tiny] [--n 1,2,4,8]

The document is a story: a prompt, then N generated images with two text tokens between
consecutive ones. ECTF trains it in ONE row: each image has its noisy copy (NVAE) and, when a
later image follows, its clean copies (VIT, CVAE) that later tokens read. The naive scheme runs
N passes, pass i = the prefix up to image i with clean copies of images 1..i-1 and a noisy copy
of image i only, each pass in a row of exactly its own length (no padding: a lower bound on
naive cost). ECTF's slots grow linearly with N; the naive passes' total grows as N^2. Attention
pairs grow as N^2 in both (a later image reads every earlier one), so the "mm" columns (all
FLOPs but attention) show the linear part; on CPU the dense attention also computes masked
pairs, a quadratic term the block-sparse attention of issue 9 removes.
Rows are built with tests/rowkit.build_row (independent of the packer).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import common, flops
from benchmarks.step import load_config
from mogao_jax.model.config import ModelConfig
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao
from mogao_jax.model import flow
from tests import rowkit

PROMPT = 8  # prompt tokens
BETWEEN = 2  # text tokens between consecutive images


def _img(i, grid, copies, dim, rng):
  return ("img", i, grid, copies, rng.uniform(-1, 1, (grid * grid, dim)).astype(np.float32))


def story(n_images: int, grid: int, dim: int, upto: int | None = None):
  """The document's entities. upto=i: the naive pass for image i (images < i clean, i noisy);
  None: the full ECTF document."""
  rng = np.random.default_rng(0)
  doc = [("txt", list(range(3, 3 + PROMPT)))]
  last = n_images if upto is None else upto
  for i in range(1, last + 1):
    if upto is not None:
      copies = "VC" if i < upto else "N"
    else:  # ECTF: noisy copy always; clean copies iff something follows
      copies = "VCN" if i < n_images else "N"
    doc.append(_img(i, grid, copies, dim, rng))
    if i < last:
      doc.append(("txt", [5] * BETWEEN))
  return doc


def row_of(doc, config) -> dict:
  """One exact-fit row (batch of 1) for the document."""
  n_txt = sum(len(e[1]) if e[0] == "txt" else e[2] ** 2 * ("V" in e[3]) for e in doc)
  n_vis = sum(0 if e[0] == "txt" else e[2] ** 2 * (("C" in e[3]) + ("N" in e[3])) for e in doc)
  m = config.model
  return rowkit.stack([rowkit.build_row([doc], n_txt, n_vis, m.patch_dim, m.latent_dim)])


def make_fwd_bwd(config):
  """jit(params, batch) -> gradients of the train loss (the step minus the optimizer)."""
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)

  def grads(params, batch):
    t_BN, noise = flow.draw_noise(jax.random.key(0), batch, config.flow)
    return jax.grad(lambda p: step_lib.loss_fn(p, model, batch, t_BN, noise, config.loss)[0])(
        params)

  def init(batch):
    return step_lib.init_state(config, model, tx, jax.random.key(0), batch).params

  return jax.jit(grads), jax.jit(init)


def run(config, ns=(1, 2, 4, 8), repeats: int = 3) -> list[dict]:
  grid, dim = config.model.vit_grid, config.model.latent_dim
  mcfg = ModelConfig.from_config(config.model)
  grads, init = make_fwd_bwd(config)
  params = None
  naive = {}  # pass i -> (seconds, slots, model FLOPs): pass i is the same for every N >= i
  rows = []
  for n in ns:
    for i in range(1, n + 1):
      if i not in naive:
        b = row_of(story(n, grid, dim, upto=i), config)
        params = params if params is not None else init(b)
        t = common.time_fn(grads, params, b, repeats=repeats)["median"]
        f = flops.step_flops(b, mcfg)
        naive[i] = (t, b["txt_kind"].size + b["vis_kind"].size, f["total"],
                    f["total"] - f["attention"])
    b = row_of(story(n, grid, dim), config)
    params = params if params is not None else init(b)
    t = common.time_fn(grads, params, b, repeats=repeats)["median"]
    f = flops.step_flops(b, mcfg)
    nv = [naive[i] for i in range(1, n + 1)]
    rows.append({"N": n, "image_tokens": n * grid * grid,
                 "ectf_slots": b["txt_kind"].size + b["vis_kind"].size,
                 "naive_slots": sum(x[1] for x in nv),
                 "ectf_GFLOP": f["total"] / 1e9, "naive_GFLOP": sum(x[2] for x in nv) / 1e9,
                 # everything but attention: the part that is linear in the slots
                 "ectf_mm_GFLOP": (f["total"] - f["attention"]) / 1e9,
                 "naive_mm_GFLOP": sum(x[3] for x in nv) / 1e9,
                 "ectf_ms": 1e3 * t, "naive_ms": 1e3 * sum(x[0] for x in nv),
                 "naive/ectf": sum(x[0] for x in nv) / t})
  for r in rows:  # per image: constant if linear in N, proportional to N if quadratic
    r["ectf_ms/N"] = r["ectf_ms"] / r["N"]
    r["naive_ms/N"] = r["naive_ms"] / r["N"]
  return rows


COLUMNS = ["N", "image_tokens", "ectf_slots", "naive_slots", "ectf_GFLOP", "naive_GFLOP",
           "ectf_mm_GFLOP", "naive_mm_GFLOP", "ectf_ms", "naive_ms", "naive/ectf", "ectf_ms/N",
           "naive_ms/N"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="experiments/tiny_cpu.py:size=tiny")
  p.add_argument("--n", default="1,2,4,8")
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args(argv)
  rows = run(load_config(args.config), tuple(int(x) for x in args.n.split(",")), args.repeats)
  print(common.header(f"ECTF scaling ({args.config}; fwd+bwd, one document, batch 1)"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
