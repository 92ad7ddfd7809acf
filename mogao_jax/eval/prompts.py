"""The fixed held-out eval set (scenes of the world's eval split only) and per-item scoring.

An `EvalItem` is a ground-truth document plus what a model must produce: an image (t2i, edit),
one image per step (story) or a text (vqa, caption). `context_parts` is what to condition on,
`gold` the ground-truth output; `score_item(item, output)` gives the record `summarize` reads,
and `score_item(item, gold(item))` must be True everywhere (the scorer's end-to-end check).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mogao_jax.data import documents
from mogao_jax.data.sources import world
from mogao_jax.eval import scorer

EVAL_KINDS = ("t2i", "edit", "story", "vqa", "caption")
_SALT = 0xE7A1  # keeps eval-set draws apart from the training streams' seeds


@dataclasses.dataclass(frozen=True)
class EvalItem:
  kind: str  # t2i | edit | story | vqa | caption
  category: str  # GenEval tag / "full", edit op, question type, "story" or "caption"
  document: documents.Document  # the ground truth; its meta holds scenes, specs and ops

  @property
  def meta(self) -> dict[str, Any]:
    return self.document.meta

  @property
  def context_parts(self) -> tuple[documents.Part, ...]:
    """t2i: the prompt; edit: source image + instruction; vqa: image + question; caption: the
    image; story: every part (the sentences are the context, the images are to generate)."""
    n = {"t2i": 1, "edit": 2, "vqa": 2, "caption": 1}.get(self.kind)
    return self.document.parts[:n] if n else self.document.parts


def gold(item: EvalItem) -> Any:
  """The ground-truth output: an image, a list of step images, or a text."""
  parts = item.document.parts
  if item.kind == "story":
    return [p.pixels for p in parts if isinstance(p, documents.Image)]
  last = parts[-1]
  return last.pixels if isinstance(last, documents.Image) else last.text


def score_item(item: EvalItem, output: Any) -> dict[str, Any]:
  """{"kind", "category", "ok"}: output as in `gold` (uint8 images / list of them / text);
  t2i records add "attrs", the per-attribute scores (`scorer.t2i_attributes`); edit, story
  and caption records "partial" (`scorer.scene_partial` / `text_overlap`)."""
  m = item.meta
  if item.kind == "t2i":
    return {"kind": item.kind, "category": item.category, "ok": scorer.score_t2i(m, output),
            "attrs": scorer.t2i_attributes(m, output)}
  partial = {}
  if item.kind == "edit":
    ok = scorer.score_edit(m["source"], m["edit"], output)
    partial = {"partial": scorer.edit_partial(m["source"], m["edit"], output)}
  elif item.kind == "story":
    ok = scorer.score_story(m["steps"], output)
    partial = {"partial": scorer.story_partial(m["steps"], output)}
  elif item.kind == "vqa":
    ok = scorer.score_answer(output, m["answer"])
  elif item.kind == "caption":
    caption = world.describe(world.Scene.from_json(m["scene"]))
    ok = scorer.score_answer(output, caption)
    partial = {"partial": scorer.text_overlap(output, caption)}
  else:
    raise ValueError(f"unknown eval item kind {item.kind!r}; known: {EVAL_KINDS}")
  return {"kind": item.kind, "category": item.category, "ok": ok} | partial


def _layout(rng, kind: str, category: str, story_steps: Sequence[int]):
  if kind == "t2i":
    spec = world.t2i_spec(rng, category, "eval")
    return world.t2i_layout(spec), spec
  if kind == "edit":
    return world.edit_layout(rng, "eval", (category,))
  if kind == "vqa":
    return world.vqa_layout(rng, "eval", (category,))
  if kind == "story":
    lo, hi = world.check_story_steps(story_steps)
    return world.story_layout(rng, "eval", int(rng.integers(lo, hi + 1)))
  return world.build_layout(rng, "caption", "eval")


def eval_prompts(config_or_seed: Any = 0, n_per_category: int = 20, *,
                 image_size: int | None = None, kinds: Sequence[str] = EVAL_KINDS,
                 story_steps: Sequence[int] | None = None) -> list[EvalItem]:
  """`n_per_category` held-out items for every category of every kind in `kinds`.

  `config_or_seed`: an int seed, or a config whose data.eval_seed (default 0), data.image_size
  and data.story_steps are used. The set depends only on these, never on the training seed,
  so runs are compared on the same items."""
  if isinstance(config_or_seed, (int, np.integer)):
    seed, data = int(config_or_seed), {}
  else:
    data = config_or_seed.data
    seed = int(data.get("eval_seed", 0))
  image_size = image_size or data.get("image_size", 32)
  story_steps = story_steps or tuple(data.get("story_steps", world.DEFAULT_STORY_STEPS))
  cats = {"t2i": world.T2I_CATEGORIES, "edit": world.OPS, "story": ("story",),
          "vqa": world.QUESTION_TYPES, "caption": ("caption",)}
  items = []
  for kind in kinds:
    if kind not in cats:
      raise ValueError(f"unknown eval kind {kind!r}; known: {EVAL_KINDS}")
    for c, category in enumerate(cats[kind]):
      for i in range(n_per_category):
        rng = np.random.default_rng([seed, _SALT, EVAL_KINDS.index(kind), c, i])
        layout, meta = _layout(rng, kind, category, story_steps)
        meta = {"split": "eval", **meta}
        doc = world.render_layout(layout, image_size, kind, meta)
        items.append(EvalItem(kind, category, doc))
  return items
