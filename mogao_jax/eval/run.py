"""Running the world's eval items through a sampler and scoring them: shared by
`python -m mogao_jax.evaluate` and the training loop's periodic-eval hook (eval/hooks.py)."""

from __future__ import annotations

from typing import Any, Sequence

from mogao_jax.data import documents
from mogao_jax.eval import prompts, scorer
from mogao_jax.sample import engine


def script_for(item, max_tokens: int) -> list:
  """What the sampler runs for an eval item (see EvalItem.context_parts)."""
  ops = [engine.Gen() if isinstance(p, documents.Image) and p.generate else p
         for p in item.context_parts]
  if item.kind in ("t2i", "edit"):
    ops.append(engine.Gen())
  elif item.kind in ("vqa", "caption"):
    ops.append(engine.Decode(max_tokens, images=False))
  return ops


def output_of(item, doc) -> Any:
  """The sampled document -> what `score_item` wants (images, list of images, or text)."""
  gen = [p for role, p in doc if role == "gen"]
  if item.kind == "story":
    return [p.pixels for p in gen if isinstance(p, documents.Image)]
  if item.kind in ("t2i", "edit"):
    return next(p.pixels for p in gen if isinstance(p, documents.Image))
  return " ".join(p.text for p in gen if isinstance(p, documents.Text))


def as_doc(item, output):
  """Context + output as [(role, part)], for the report."""
  if item.kind == "story":
    imgs = iter(output)
    return [("gen", documents.Image(next(imgs))) if isinstance(p, documents.Image) and p.generate
            else ("prompt", p) for p in item.context_parts]
  ctx = [("prompt", p) for p in item.context_parts]
  out = documents.Text(output) if isinstance(output, str) else documents.Image(output)
  return ctx + [("gen", out)]


def generate(sampler: engine.Sampler, items: Sequence, max_tokens: int) -> list:
  """Every item's output (what score_item wants), sampled in batches."""
  docs = sampler.run([script_for(it, max_tokens) for it in items])
  return [output_of(it, d) for it, d in zip(items, docs)]


def score(items: Sequence, outputs: Sequence) -> tuple[list[dict], dict]:
  """(per-item records, summary by kind) of the outputs."""
  records = [prompts.score_item(it, o) | {"index": i} | (
      {"output": o} if isinstance(o, str) else {}) for i, (it, o) in
             enumerate(zip(items, outputs))]
  return records, scorer.summarize(records)
