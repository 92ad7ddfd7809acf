"""``python -m mogao_jax.evaluate --workdir DIR [--n_per_category N] [--checkpoint_step S]
[--ground-truth]``

Generates for the world's fixed held-out prompt set (`mogao_jax.eval.eval_prompts`) with the
newest checkpoint of DIR: images for t2i, edit and story (every story image generated in turn,
the story's sentences fed between them), greedy text for vqa and caption. Scores every item
with the world's exact scorer (t2i also per attribute, beside GenEval's all-or-nothing score:
count, colour, position, shape, size of coloured blobs) and writes OUT/eval.json (the summary
and every item's score) and OUT/index.html (outputs side by side with ground truth).
--ground-truth scores the world's own renderings and answers through the same path instead (no
checkpoint needed): ~1.0 everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from mogao_jax import eval as eval_lib
from mogao_jax import quiet_logs
from mogao_jax.eval import run
from mogao_jax.sample import engine, load, options, report
from mogao_jax.train import restore

def define_flags() -> None:
  options.define()
  flags.adopt_module_key_flags(options)  # --help lists the shared flags (--workdir, --steps...)
  flags.DEFINE_integer("n_per_category", 4, "held-out items per category of every kind")
  flags.DEFINE_bool("ground-truth", False, "score the world's own outputs (scorer check)")
  flags.DEFINE_string("out", None, "output directory (default WORKDIR/eval/step_<N>, or "
                      "WORKDIR/eval/ground_truth)")
  flags.DEFINE_list("kinds", None, "eval kinds (default all: t2i, edit, story, vqa, caption)")
  flags.DEFINE_integer("checkpoint_step", None, "the checkpoint to evaluate (default the newest;"
                       " train.keep_every keeps earlier ones, for learning curves)")


def evaluate(workdir: str, *, n_per_category: int = 4, ground_truth: bool = False,
             out: str | None = None, kinds=None, sampler_kwargs=None, max_tokens: int = 32,
             use_ema: bool = True, step: int | None = None,
             mesh: str = load.RUN) -> dict[str, Any]:
  """Runs the eval; returns what it wrote to eval.json. sampler_kwargs: Sampler.from_config's
  (sc, batch_size, capacity, seed); step: the checkpoint (None = the newest); mesh: where the
  params go (sample/load.py parse_mesh: "run", "single" or axis=size overrides)."""
  config = restore.load_config(workdir)
  items = eval_lib.eval_prompts(config, n_per_category, kinds=kinds or eval_lib.EVAL_KINDS)
  t0, meta = time.time(), {"mode": "ground_truth" if ground_truth else "model"}
  if ground_truth:
    outputs = [eval_lib.gold(it) for it in items]
  else:
    config, params, step, tok, placement = load.load_on_mesh(workdir, use_ema, step, mesh)
    sampler = engine.Sampler.from_config(config, params, tok, max_tokens=max_tokens,
                                         placement=placement, **(sampler_kwargs or {}))
    outputs = run.generate(sampler, items, max_tokens)
    meta |= {"step": step, "sampler": dataclasses.asdict(sampler.sc),
             "capacity": sampler.capacity, "batch_size": sampler.batch_size,
             "seed": sampler.seed, "max_tokens": max_tokens,
             "mesh": dict(placement.mesh.shape) if placement else "single"}
  records, summary = run.score(items, outputs)
  result = {**meta, "workdir": os.path.abspath(workdir), "n_per_category": n_per_category,
            "seconds": round(time.time() - t0, 2), "summary": summary, "items": records}
  out = out or os.path.join(workdir, "eval", "ground_truth" if ground_truth
                            else f"step_{meta['step']}")
  _write(out, result, items, outputs)
  return result


def _write(out, result, items, outputs):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "eval.json"), "w") as f:
    json.dump(result, f, indent=1)
  w = report.Writer(out)
  rows, classes = [], []
  for kind, s in result["summary"].items():
    for cat, c in s["categories"].items():
      rows.append([kind, cat, c["n"], f"{c['acc']:.3f}"])
      classes.append("")
    rows.append([f"<b>{kind}</b>", "<b>overall</b>", s["n"], f"<b>{s['overall']:.3f}</b>"])
    classes.append("")
    for attr, a in s.get("attributes", {}).items():
      rows.append([kind, f"attribute: {attr}", a["n"], f"{a['acc']:.3f}"])
      classes.append("")
  body = report.table(["kind", "category", "n", "accuracy"], rows)
  rows, classes = [], []
  for it, o, r in zip(items, outputs, result["items"]):
    ok = r["ok"]
    rows.append([f"{it.kind}/{it.category}", w.document(run.as_doc(it, o), f"{r['index']}_"),
                 w.document(run.as_doc(it, eval_lib.gold(it)), f"{r['index']}_gold_"),
                 html_ok(ok)])
    classes.append("ok" if (all(ok) if isinstance(ok, list) else ok) else "bad")
  body += "<h2>items</h2>" + report.table(["item", "output", "ground truth", "ok"], rows, classes)
  title = f"mogao_jax.evaluate ({result['mode']}, step {result.get('step', '-')})"
  w.page(title, body)


def attributes_line(kind: str, s: dict[str, Any]) -> str | None:
  """The per-attribute line of a kind's summary (t2i), None if it has none."""
  attrs = s.get("attributes")
  if not attrs:
    return None
  return f"{kind:8s} attributes  " + "  ".join(
      f"{a} {v['acc']:.3f} (n {v['n']})" for a, v in attrs.items())


def html_ok(ok) -> str:
  return " ".join(map(str, ok)) if isinstance(ok, list) else str(ok)


@restore.without_traceback
def main(argv):
  quiet_logs.install()
  options.workdir_or_usage_error(argv)
  f = options.FLAGS
  kw = options.sampler_kwargs()
  max_tokens = kw.pop("max_tokens")
  result = evaluate(f.workdir, n_per_category=f.n_per_category, ground_truth=f["ground-truth"].value,
                    out=f.out, kinds=f.kinds, sampler_kwargs=kw,
                    max_tokens=max_tokens, use_ema=f.use_ema, step=f.checkpoint_step,
                    mesh=f.mesh)
  for kind, s in result["summary"].items():
    cats = ", ".join(f"{c} {v['acc']:.3f}" for c, v in s["categories"].items())
    logging.info("%s overall %.3f (%s)", kind, s["overall"], cats)
    print(f"{kind:8s} overall {s['overall']:.3f}  ({cats})")
    line = attributes_line(kind, s)
    if line:
      logging.info("%s", line)
      print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
