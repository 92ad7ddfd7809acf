"""Peer: lucidrains' transfusion-pytorch next to our train step, same sizes, same data, same CPU
threads: step times and their ratio.

  python -m benchmarks.peer [--config experiments/tiny_cpu.py:size=tiny] [--repeats 10]
  python -m benchmarks.peer --own --repeats 10   # the peer at its own scale (OWN below)

Needs the `bench` extra (`pip install -c constraints.txt -e '.[bench]'`: transfusion-pytorch
and the CPU torch pinned in constraints.txt); without it this prints a skip message and exits 0.

What is the same: width, depth, heads, head dim, MLP width (its GEGLU at expansion
mlp_dim / width), vocabulary, latent channels, rows per step, and each row's content: every
row of one real pipeline batch becomes one Transfusion sample holding the row's text tokens and
its images (each image once, as an [h, w, latent] tensor) in the row's order, then random text
tokens until its sequence is exactly our joint row length (l_txt + l_vis slots). Training =
forward + backward + AdamW with global-norm clipping, float32, on the CPU, with
torch.set_num_threads = the threads of XLA's CPU intra-op pool (counted in this process).

Where the models differ (see RESULTS.md): Transfusion has ONE pathway (text and image tokens
share all weights; per-token AdaLN only), we have two (text and vision weights, one joint
attention); its mask is causal + bidirectional within an image, over the whole sample (no
document boundaries inside a row, no padding), ours the rule table over packed documents; it
noises every image (all images carry a flow loss, none is a clean context copy), we keep up to
three copies per image (VIT for understanding, CVAE clean, NVAE noisy) and run a ViT over VIT
slots; it is full multi-head attention (no GQA), with softclamped logits, value gates, U-Net
skips and an attention-residual per layer; its batch preparation is Python over lists of tensors
(part of its step time), ours is a jitted program over a packed batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from benchmarks import common
from benchmarks import step as bench_step
from mogao_jax.data.batch import Kind
from mogao_jax.model.config import ModelConfig

SKIP = ("benchmarks.peer: transfusion-pytorch is not installed; skipped "
        "(pip install -c constraints.txt -e '.[bench]')")


def transfusion_available() -> bool:
  try:
    import transfusion_pytorch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def xla_threads() -> int:
  """Threads of XLA's CPU intra-op pool in this process (tf_XLAEigen); after a JAX computation
  has run. Falls back to the schedulable cores, which is how XLA sizes the pool."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  jax.jit(lambda a: a @ a)(jnp.ones((256, 256))).block_until_ready()
  try:
    n = sum(open(f"/proc/self/task/{t}/comm").read().strip() == "tf_XLAEigen"
            for t in os.listdir("/proc/self/task"))
  except OSError:
    n = 0
  return n or len(os.sched_getaffinity(0))


def meta_tokens(h: int, w: int) -> int:
  """Extra tokens Transfusion adds per image: [som], [meta], the shape string 'h,w', [eom]."""
  return 3 + len(f"{h},{w}")


def row_entities(batch: dict, r: int) -> list:
  """Row r as an ordered list of ('txt', token) and ('img', [h, w, C] array): documents in
  segment order, entities in T order (an image once, from its vision copy, else its VIT)."""
  items = []
  txt_kind, vis_kind = batch["txt_kind"][r], batch["vis_kind"][r]
  for i in np.nonzero(txt_kind == Kind.TXT)[0]:
    items.append(((batch["txt_segment"][r, i], batch["txt_pos"][r, i, 0], 0, int(i)),
                  ("txt", int(batch["txt_token"][r, i]))))
  images = {}
  for kinds, stream, feat in ((vis_kind, "vis", "vis_latent"), (txt_kind, "txt", "txt_patch")):
    for img in np.unique(batch[f"{stream}_image"][r][kinds > Kind.TXT]):
      if img == 0 or img in images:
        continue
      sel = (batch[f"{stream}_image"][r] == img) & (kinds > Kind.TXT)
      if stream == "vis":  # one copy (the NVAE one if any, else the CVAE one)
        k = Kind.NVAE if (sel & (kinds == Kind.NVAE)).any() else Kind.CVAE
        sel &= kinds == k
      idx = np.nonzero(sel)[0]
      pos = batch[f"{stream}_pos"][r, idx]
      h, w = int(pos[:, 1].max()) + 1, int(pos[:, 2].max()) + 1
      lat = np.zeros((h, w, batch[feat].shape[-1]), np.float32)
      lat[pos[:, 1], pos[:, 2]] = batch[feat][r, idx]
      images[img] = lat
      items.append(((batch[f"{stream}_segment"][r, idx[0]], pos[0, 0], 1, int(idx[0])),
                    ("img", lat)))
  return [e for _, e in sorted(items, key=lambda x: x[0])]


def transfusion_samples(batch: dict, seq_len: int, vocab: int, seed: int = 0):
  """One Transfusion sample per row (a list of int / float torch tensors), filled with random
  text to exactly seq_len tokens of its transformer input. Returns (samples, images, texts)."""
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  samples, n_img, n_txt = [], 0, 0
  for r in range(batch["txt_kind"].shape[0]):
    sample, run = [], []
    length = 2 - 1  # its [sos] and [eos]; the last token is dropped for next-token targets
    for kind, val in row_entities(batch, r):
      if kind == "txt":
        run.append(val)
        length += 1
        n_txt += 1
        continue
      if run:
        sample.append(torch.tensor(run, dtype=torch.long))
        run = []
      sample.append(torch.from_numpy(val))
      length += val.shape[0] * val.shape[1] + meta_tokens(*val.shape[:2])
      n_img += 1
    run += list(rng.integers(3, vocab, max(0, seq_len - length)))
    if run:
      sample.append(torch.tensor(run, dtype=torch.long))
    samples.append(sample)
  return samples, n_img, n_txt


def make_peer(mcfg: ModelConfig):
  from transfusion_pytorch import Transfusion  # pylint: disable=g-import-not-at-top
  grid = mcfg.vit_grid
  return Transfusion(
      num_text_tokens=mcfg.vocab_size, dim_latent=mcfg.latent_dim,
      modality_default_shape=(grid, grid), modality_num_dim=2,
      transformer=dict(dim=mcfg.width, depth=mcfg.depth, dim_head=mcfg.head_dim,
                       heads=mcfg.num_heads, ff_expansion_factor=1.5 * mcfg.mlp_dim
                       / mcfg.width))  # its GEGLU inner width = dim * factor * 2 / 3


def time_peer(config, batch: dict, repeats: int, threads: int, seq_len: int = 0) -> dict:
  """seq_len: Transfusion's tokens per sample (0 = our joint row length)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  mcfg = ModelConfig.from_config(config.model)
  seq_len = seq_len or batch["txt_kind"].shape[1] + batch["vis_kind"].shape[1]
  samples, n_img, n_txt = transfusion_samples(batch, seq_len, mcfg.vocab_size, config.seed)
  model = make_peer(mcfg).train()
  o = config.optim
  opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2),
                          weight_decay=o.weight_decay)
  shapes = []
  hook = model.transformer.register_forward_hook(
      lambda mod, args, out: shapes.append(tuple(args[0].shape)))

  def train_step():
    loss = model(samples)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  for _ in range(2):  # warm-up (allocator, lazy init)
    train_step()
  hook.remove()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    train_step()
    times.append(time.perf_counter() - t0)
  return {"times": times, "params": sum(p.numel() for p in model.parameters()),
          "seq": shapes[0][1], "rows": len(samples), "images": n_img, "text": n_txt,
          "torch": torch.__version__}


def time_ours(config, batch: dict, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.device_put(batch)
  step, state = bench_step.compile_step(config, dev)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  times = bench_step.time_steps(step, state, dev, repeats)
  return {"times": times, "params": params}


COLUMNS = ["model", "params_M", "rows", "seq/row", "images", "step_ms", "step_ms_min",
           "step_ms_max", "threads", "ratio (peer / ours)"]


def run(config, batch: dict, repeats: int, seq_len: int = 0) -> list[dict]:
  threads = xla_threads()
  ours = time_ours(config, batch, repeats)
  peer = time_peer(config, batch, repeats, threads, seq_len)
  seq = batch["txt_kind"].shape[1] + batch["vis_kind"].shape[1]
  n_img = sum(len(np.unique(np.concatenate([batch["txt_image"][r], batch["vis_image"][r]])))
              - 1 for r in range(batch["txt_kind"].shape[0]))
  rows = []
  for name, res, s, imgs in (("mogao_jax (jax)", ours, seq, n_img),
                             (f"transfusion-pytorch (torch {peer['torch']})", peer,
                              peer["seq"], peer["images"])):
    t = res["times"]
    rows.append({"model": name, "params_M": res["params"] / 1e6, "rows": batch["txt_kind"].shape[0],
                 "seq/row": s, "images": imgs, "step_ms": 1e3 * statistics.median(t),
                 "step_ms_min": 1e3 * min(t), "step_ms_max": 1e3 * max(t), "threads": threads})
  rows[0]["ratio (peer / ours)"] = 1.0
  rows[1]["ratio (peer / ours)"] = rows[1]["step_ms"] / rows[0]["step_ms"]
  return rows


# Transfusion at its own scale (issue 21): dim 256, depth 4, 8 samples of 341 tokens, each with
# two 8 x 8 x 16 latent images. Its sample: 200 text tokens in three runs around the two images
# (64 tokens + [som] [meta] '8,8' [eom] each) and [sos] / [eos]: 1 + 200 + 2 x 70 = 341.
OWN = dict(width=256, depth=4, heads=4, head_dim=64, rows=8, text=(67, 67, 66), grid=8,
           channels=16, seq=341)


def own_config(base: str = "experiments/tiny_cpu.py:size=tiny"):
  """Our model at the peer's width and depth (full multi-head like it), latents of 16 channels
  per slot, the text / vision stream lengths that one such document takes in our encoding."""
  c = bench_step.load_config(base)
  g = OWN["grid"]
  n_txt = sum(OWN["text"]) + 2 * g * g  # TXT + the VIT copies of both images
  c.data.update(dict(l_txt=n_txt, l_vis=3 * g * g, batch_size=OWN["rows"], image_size=4 * g))
  c.model.update(dict(width=OWN["width"], depth=OWN["depth"], num_heads=OWN["heads"],
                      num_kv_heads=OWN["heads"], head_dim=OWN["head_dim"],
                      mlp_dim=4 * OWN["width"], latent_dim=OWN["channels"], vit_grid=g))
  return c


def own_batch(config, seed: int = 0) -> dict:
  """Rows of one document each: text, image 1 (generated; then a clean context for image 2),
  text, image 2 (generated), text. Our encoding of it: VIT copies of both images in the text
  stream, CVAE + NVAE of image 1 and NVAE of image 2 in the vision stream (what our train step
  computes for the peer's sample: the comparison is at equal documents, not equal tokens)."""
  from mogao_jax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  d, m, g = config.data, config.model, OWN["grid"]
  rows = []
  for _ in range(d.batch_size):
    row = batch_lib.empty_row(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim)
    it = iv = t = 0

    def put(stream, i, kind, image, pos):
      row[f"{stream}_segment"][i], row[f"{stream}_kind"][i] = 1, kind
      row[f"{stream}_image"][i], row[f"{stream}_pos"][i] = image, pos

    for part, n_text in enumerate(OWN["text"]):
      for _ in range(n_text):
        put("txt", it, Kind.TXT, 0, (t, 0, 0))
        row["txt_token"][it] = row["txt_target"][it] = rng.integers(3, m.vocab_size)
        row["txt_loss_w"][it] = 1.0
        it, t = it + 1, t + 1
      if part == 2:
        break
      copies = (Kind.CVAE, Kind.NVAE) if part == 0 else (Kind.NVAE,)
      for n in range(g * g):
        pos = (t, n // g, n % g)
        put("txt", it, Kind.VIT, part + 1, pos)
        row["txt_patch"][it] = rng.uniform(-1, 1, m.patch_dim)
        it += 1
        for kind in copies:
          put("vis", iv, kind, part + 1, pos)
          row["vis_latent"][iv] = rng.normal(size=m.latent_dim)
          row["vis_loss_w"][iv] = float(kind == Kind.NVAE)
          iv += 1
      t += 1
    rows.append(row)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _cpu_times() -> list[int]:
  """The host's CPU time counters (/proc/stat 'cpu' line: user ... steal at index 7): a busy
  or stolen host makes step medians disagree between runs (RESULTS.md section 5)."""
  with open("/proc/stat") as f:
    return [int(x) for x in f.readline().split()[1:9]]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="experiments/tiny_cpu.py:size=tiny")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--workdir", default=str(bench_step.REPO / "runs" / "bench"),
                 help="tokenizer cache")
  p.add_argument("--own", action="store_true",
                 help="the peer at its own scale (OWN): dim 256, depth 4, 8 x 341 tokens, "
                      "2 images of 8 x 8 x 16 latents; ours at that width and depth")
  args = p.parse_args(argv)
  if not transfusion_available():
    print(SKIP)
    return []
  cpu0 = _cpu_times()
  if args.own:
    config = own_config()
    rows = run(config, own_batch(config), args.repeats, seq_len=OWN["seq"])
    name = f"its own scale {OWN}"
  else:
    config = bench_step.load_config(args.config)
    rows = run(config, bench_step.pipeline_batch(config, args.workdir), args.repeats)
    name = args.config
  with open("/proc/loadavg") as f:
    load = " ".join(f.read().split()[:3])
  cpu1 = _cpu_times()
  steal = (cpu1[7] - cpu0[7]) / max(sum(cpu1) - sum(cpu0), 1)
  print(common.header(f"Peer: transfusion-pytorch vs mogao_jax ({name}); load {load}, "
                      f"steal {100 * steal:.1f}% of CPU time during the run"))
  print(common.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  main()
