"""World documents: t2i, caption, vqa, edit and story, mixed by config weights.

A document is first built as a layout (texts, and scenes still to render) plus JSON metadata,
then rendered; the tokenizer corpus reuses the layouts without paying for rendering.
Every scene of a document lies in the document's split (see `scene.split_of`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from mogao_jax.data import documents
from mogao_jax.data.sources.world import language
from mogao_jax.data.sources.world import render as render_lib
from mogao_jax.data.sources.world import scene as scene_lib
from mogao_jax.data.sources.world.scene import Scene

DOC_KINDS = ("t2i", "caption", "vqa", "edit", "story")
# "full" prompts state every attribute (sizes, absolute positions) that GenEval's categories
# leave free, so generation learns them too; it gets the weight of two categories.
DEFAULT_T2I_WEIGHTS = {c: 1.0 for c in language.GENEVAL_CATEGORIES} | {"full": 2.0}
DEFAULT_STORY_STEPS = (2, 4)
STORY_OPS = ("add", "recolour", "move")  # objects appear, change colour, move

# A layout item: ("text", str, role) (role: documents.TEXT_ROLES, what the text is for) or
# ("image", Scene, generate).
Layout = list[tuple]


def check_weights(weights: Mapping[str, float], known: Sequence[str],
                  key: str) -> tuple[list[str], np.ndarray]:
  """Validated (names, probabilities, read-only) from the config dict `key`; memoised, since
  every document asks."""
  items = tuple(weights.items())
  try:
    hash(items)
  except TypeError:
    names, probs = _checked_weights.__wrapped__(items, tuple(known), key)
  else:
    names, probs = _checked_weights(items, tuple(known), key)
  return list(names), probs


@functools.lru_cache(maxsize=64)
def _checked_weights(items, known, key) -> tuple[tuple[str, ...], np.ndarray]:
  names = [k for k, _ in items]
  for k in names:
    if k not in known:
      raise ValueError(f"{key} has unknown entry {k!r}; known: {tuple(known)}")
  w = np.array([float(v) for _, v in items], np.float64)
  if not names or (w < 0).any() or w.sum() <= 0:
    raise ValueError(f"{key} must be non-negative with a positive sum, got {dict(items)}")
  probs = w / w.sum()
  probs.flags.writeable = False
  return tuple(names), probs


def check_doc_weights(doc_weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
  return check_weights(doc_weights, DOC_KINDS, "config.data.doc_weights")


def check_story_steps(story_steps: Sequence[int]) -> tuple[int, int]:
  lo, hi = (int(x) for x in story_steps)
  if not 1 <= lo <= hi:
    raise ValueError(f"config.data.story_steps must be (min, max) with 1 <= min <= max, "
                     f"got {tuple(story_steps)}")
  return lo, hi


# --- text-to-image --------------------------------------------------------------------------


def _t2i_scene(rng: np.random.Generator, category: str) -> Scene:
  shapes = list(rng.permutation(scene_lib.SHAPES))
  if category in ("single_object", "colors"):
    return scene_lib.random_objects(rng, 1)
  if category in ("two_object", "position"):
    return scene_lib.random_objects(rng, 2, shapes=shapes[:2])
  if category == "color_attr":
    return scene_lib.random_objects(rng, 2, shapes=shapes[:2],
                                    colours=rng.permutation(list(scene_lib.COLOURS))[:2])
  if category == "counting":  # several objects of one shape: GenEval counts one class
    n = int(rng.integers(2, scene_lib.MAX_OBJECTS + 1))
    return scene_lib.random_objects(rng, n, shapes=[shapes[0]] * n)
  if category == "full":
    return scene_lib.sample_scene(rng)
  raise ValueError(f"unknown t2i category {category!r} (config.data.t2i_weights); "
                   f"known: {language.T2I_CATEGORIES}")


def t2i_spec(rng: np.random.Generator, category: str, split: str) -> dict[str, Any]:
  """A t2i prompt spec: category, the stated objects/count/relation, and the true scene."""
  scene = scene_lib.sample_in_split(rng, split, lambda r: _t2i_scene(r, category))
  objs = list(scene.objects)
  spec: dict[str, Any] = {"category": category, "scene": scene.to_json()}
  if category == "counting":
    spec |= {"objects": [{"shape": objs[0].shape}], "count": len(objs)}
  elif category == "full":
    spec["objects"] = [{"shape": o.shape, "colour": o.colour} for o in objs]
  else:
    if len(objs) == 2 and rng.random() < 0.5:
      objs = objs[::-1]  # either object may be named first
    with_colour = category in ("colors", "color_attr")
    spec["objects"] = [{"shape": o.shape, **({"colour": o.colour} if with_colour else {})}
                       for o in objs]
    if category == "position":
      a, b = objs
      rels = []
      if a.col != b.col:
        rels.append("left" if a.col < b.col else "right")
      if a.row != b.row:
        rels.append("above" if a.row < b.row else "below")
      spec["relation"] = rels[int(rng.integers(len(rels)))]
  spec["prompt"] = language.t2i_prompt(spec)
  return spec


# --- layouts of each kind --------------------------------------------------------------------


def _t2i(rng, split, t2i_weights, story_steps):
  names, probs = check_weights(t2i_weights, language.T2I_CATEGORIES, "config.data.t2i_weights")
  spec = t2i_spec(rng, names[int(rng.choice(len(names), p=probs))], split)
  return t2i_layout(spec), spec


def t2i_layout(spec: dict[str, Any]) -> Layout:
  """A t2i spec's layout: its prompt, then the scene to generate."""
  return [("text", spec["prompt"], "prompt"), ("image", Scene.from_json(spec["scene"]), True)]


def _caption(rng, split, t2i_weights, story_steps):
  scene = scene_lib.sample_in_split(rng, split, scene_lib.sample_scene)
  return [("image", scene, False), ("text", language.describe(scene), "caption")], {
      "category": "caption", "scene": scene.to_json()}


def vqa_layout(rng, split, qtypes=language.QUESTION_TYPES):
  """An image, a question of one of `qtypes`, its answer."""
  scene = scene_lib.sample_in_split(rng, split, scene_lib.sample_scene)
  while True:  # "where" needs an object nameable without its position; redraw otherwise
    qtype = qtypes[int(rng.integers(len(qtypes)))]
    qa = language.question_answer(scene, qtype, rng)
    if qa:
      break
  return [("image", scene, False), ("text", qa[0], "question"), ("text", qa[1], "answer")], {
      "category": qtype, "scene": scene.to_json(), "question": qa[0], "answer": qa[1]}


def edit_layout(rng, split, ops=scene_lib.OPS):
  """A source image, an instruction (one of `ops`), the edited image (generated)."""
  while True:
    source = scene_lib.sample_in_split(rng, split, scene_lib.sample_scene)
    op = scene_lib.sample_op(rng, source, split, ops)
    if op is not None:
      break
  target = scene_lib.apply_op(source, op)
  text = language.op_text(source, op, "edit")
  return [("image", source, False), ("text", text, "instruction"), ("image", target, True)], {
      "category": op["op"], "source": source.to_json(), "edit": op, "instruction": text,
      "target": target.to_json()}


def story_layout(rng, split, n_steps):
  """`n_steps` x (a sentence, the image after it): one object appears, then objects appear,
  change colour or move; every image is generated and must stay consistent with the last."""
  while True:  # restart on the rare dead end (no op keeps the scene in the split)
    scene, layout, steps = Scene(()), [], []
    for i in range(n_steps):
      op = scene_lib.sample_op(rng, scene, split, ("add",) if i == 0 else STORY_OPS)
      if op is None:
        break
      text = language.op_text(scene, op, "story")
      scene = scene_lib.apply_op(scene, op)
      layout += [("text", text, "story"), ("image", scene, True)]
      steps.append({"op": op, "text": text, "scene": scene.to_json()})
    if len(steps) == n_steps:
      return layout, {"category": "story", "steps": steps}


def _vqa(rng, split, t2i_weights, story_steps):
  return vqa_layout(rng, split)


def _edit(rng, split, t2i_weights, story_steps):
  return edit_layout(rng, split)


def _story(rng, split, t2i_weights, story_steps):
  lo, hi = check_story_steps(story_steps)
  return story_layout(rng, split, int(rng.integers(lo, hi + 1)))


_BUILDERS = {"t2i": _t2i, "caption": _caption, "vqa": _vqa, "edit": _edit, "story": _story}


def build_layout(rng: np.random.Generator, kind: str, split: str = "train",
                 t2i_weights: Mapping[str, float] | None = None,
                 story_steps: Sequence[int] = DEFAULT_STORY_STEPS) -> tuple[Layout, dict]:
  """(layout, meta) of one document of `kind`, every scene in `split`."""
  if kind not in _BUILDERS:
    raise ValueError(f"unknown document kind {kind!r}; known: {DOC_KINDS}")
  scene_lib.check_split(split)
  layout, meta = _BUILDERS[kind](rng, split, t2i_weights or DEFAULT_T2I_WEIGHTS, story_steps)
  return layout, {"split": split, **meta}


def render_layout(layout: Layout, image_size: int, kind: str,
                  meta: dict) -> documents.Document:
  parts = [documents.Text(x[1], role=x[2]) if x[0] == "text" else
           documents.Image(render_lib.render(x[1], image_size), generate=x[2]) for x in layout]
  return documents.Document(parts, kind=kind, meta=meta)


def make_document(seed: int | Sequence[int], index: int, image_size: int,
                  doc_weights: Mapping[str, float], *, split: str = "train",
                  t2i_weights: Mapping[str, float] | None = None,
                  story_steps: Sequence[int] = DEFAULT_STORY_STEPS) -> documents.Document:
  """Document `index` of the world stream `seed` in `split`: a pure function of its arguments."""
  seed = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
  rng = np.random.default_rng([*seed, int(index)])
  kinds, probs = check_doc_weights(doc_weights)
  kind = kinds[int(rng.choice(len(kinds), p=probs))]
  layout, meta = build_layout(rng, kind, split, t2i_weights, story_steps)
  return render_layout(layout, image_size, kind, meta)


def world_text_corpus(n: int, seed: int = 0) -> list[str]:
  """Every template's words (fixed lines) plus the texts of `n` documents of every kind."""
  lines = language.vocabulary_lines()
  t2i_all = {c: 1.0 for c in language.T2I_CATEGORIES}
  for i in range(n):
    rng = np.random.default_rng([seed, 0x7e27, i])
    layout, _ = build_layout(rng, DOC_KINDS[i % len(DOC_KINDS)], "train", t2i_all)
    lines += [x[1] for x in layout if x[0] == "text"]
  return lines
