"""Exact scores on the built-in world: t2i (GenEval-style), editing, stories, answers.

Every image score parses the image with `parse.parse_image`; an unparseable image (noise, a
broken generation) satisfies nothing. A record is a dict {"kind", "category", "ok"} where "ok"
is a bool, or a list of bools for a story (one per step); `summarize` aggregates records.
Beside GenEval's all-or-nothing "ok", t2i records carry "attrs" (`t2i_attributes`): one bool
per stated attribute, scored on `parse.parse_blobs`, so partial progress shows; edit, story
and caption records carry "partial" in [0, 1] (`scene_partial`, `text_overlap`) for the same
reason: their exact scores stay at 0 until a whole scene or sentence is right. The exact "ok"
scores are unchanged by these.
"""

from __future__ import annotations

import collections
import difflib
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mogao_jax.data.sources import world
from mogao_jax.eval import parse

Scene = world.Scene


def _has(scene: Scene, shape: str, colour: str | None = None) -> list[world.Object]:
  return [o for o in scene.objects if o.shape == shape and colour in (None, o.colour)]


def _relation_holds(a: world.Object, b: world.Object, relation: str) -> bool:
  return {"left": a.col < b.col, "right": a.col > b.col, "above": a.row < b.row,
          "below": a.row > b.row}[relation]


def t2i_satisfied(spec: Mapping[str, Any], scene: Scene | None) -> bool:
  """Whether a parsed scene satisfies a t2i prompt spec (`world.t2i_spec`).

  As GenEval: each stated object must be present (at least once) with its stated colour;
  counting wants exactly `count` objects of the shape; position wants a pair in the stated
  relation (grid columns/rows); objects the prompt does not mention are free. "full" (not a
  GenEval category) wants exactly the described scene."""
  if scene is None:
    return False
  cat, objs = spec["category"], spec.get("objects", ())
  if cat == "full":
    return scene == Scene.from_json(spec["scene"])
  if cat == "counting":
    return len(_has(scene, objs[0]["shape"])) == spec["count"]
  found = [_has(scene, o["shape"], o.get("colour")) for o in objs]
  if not all(found):
    return False
  if cat == "position":
    return any(_relation_holds(a, b, spec["relation"]) for a in found[0] for b in found[1])
  if cat not in world.T2I_CATEGORIES:
    raise ValueError(f"unknown t2i category {cat!r}; known: {world.T2I_CATEGORIES}")
  return True


def score_t2i(prompt_meta: Mapping[str, Any], image: np.ndarray) -> bool:
  """GenEval-style: every stated object, count, colour and relation holds in `image`."""
  return t2i_satisfied(prompt_meta, parse.parse_image(image))


ATTRIBUTES = ("count", "colour", "position", "shape", "size")


def stated_attributes(spec: Mapping[str, Any]) -> dict[str, Any]:
  """What a t2i prompt spec states, per attribute of `ATTRIBUTES` it states (absent if not).

  "count": the number of objects (every prompt names each object, "a circle" being one).
  "colour" / "shape" / "size": a Counter (multiset) over the objects. "position": a frozenset
  of (row, col) cells, or {"relation": relation, "between": (colour_a, colour_b)} when the
  prompt states a relation between objects of stated colours; a relation between uncoloured
  objects is not scored here (it would need the shapes, which "shape" scores already).

  Per category: single_object, two_object, counting: count + shape; colors, color_attr:
  count + colour + shape; position: count + shape; full (the scene, spec["scene"]): all five.
  """
  cat = spec["category"]
  if cat not in world.T2I_CATEGORIES:
    raise ValueError(f"unknown t2i category {cat!r}; known: {world.T2I_CATEGORIES}")
  if cat == "full":
    objs = Scene.from_json(spec["scene"]).objects
    return {"count": len(objs), "colour": collections.Counter(o.colour for o in objs),
            "position": frozenset((o.row, o.col) for o in objs),
            "shape": collections.Counter(o.shape for o in objs),
            "size": collections.Counter(o.size for o in objs)}
  objs = list(spec["objects"]) * (spec["count"] if cat == "counting" else 1)
  out: dict[str, Any] = {"count": len(objs)}
  if all("colour" in o for o in objs):
    out["colour"] = collections.Counter(o["colour"] for o in objs)
    if "relation" in spec:
      out["position"] = {"relation": spec["relation"],
                         "between": (objs[0]["colour"], objs[1]["colour"])}
  out["shape"] = collections.Counter(o["shape"] for o in objs)
  return {a: out[a] for a in ATTRIBUTES if a in out}


def t2i_attributes(spec: Mapping[str, Any], image: np.ndarray) -> dict[str, bool]:
  """Per stated attribute (`stated_attributes`), whether `image` gets it right on its own.

  Scored on `parse.parse_blobs` (every coloured blob, a world shape or not), attribute by
  attribute, so a generation that is wrong in one respect still scores the others:
  "count": number of blobs == number of stated objects;
  "colour": multiset of blob colours == multiset of stated colours;
  "position": set of blob cells == set of stated cells (so two blobs in one cell fail count,
    not position), or for a stated relation: some blob of the first colour stands in it to
    some blob of the second (grid rows / columns, as `t2i_satisfied`);
  "shape": multiset of blob shapes == stated shapes (an unrecognised blob is a wrong shape);
  "size": multiset of blob sizes (small / large from a blob's extent) == stated sizes.
  Objects a prompt leaves unmentioned are not free here (unlike `t2i_satisfied`): an extra
  blob fails count and every multiset. A blank image fails every attribute."""
  blobs = parse.parse_blobs(image)
  out = {}
  for attr, want in stated_attributes(spec).items():
    if attr == "count":
      ok = len(blobs) == want
    elif attr == "position" and isinstance(want, dict):
      ca, cb = want["between"]
      ok = any(_relation_holds(a, b, want["relation"]) for a in blobs if a.colour == ca
               for b in blobs if b.colour == cb)
    elif attr == "position":
      ok = {(b.row, b.col) for b in blobs} == want
    else:
      ok = collections.Counter(getattr(b, attr) for b in blobs) == want
    out[attr] = bool(ok)
  return out


def score_edit(source_scene: Scene | Mapping, instruction_meta: Mapping[str, Any],
               image: np.ndarray) -> bool:
  """The instruction applied and everything else unchanged. `instruction_meta`: the scene op
  (`world.apply_op`) or an edit document's meta (which holds it under "edit")."""
  return parse.parse_image(image) == edited_scene(source_scene, instruction_meta)


def edited_scene(source_scene: Scene | Mapping, instruction_meta: Mapping[str, Any]) -> Scene:
  """The scene an edit should produce (`instruction_meta` as in `score_edit`)."""
  return world.apply_op(source_scene, instruction_meta.get("edit", instruction_meta))


def score_story(step_metas: Sequence[Mapping[str, Any]],
                images: Sequence[np.ndarray]) -> list[bool]:
  """Per step: its image shows exactly the story's scene so far (step meta "scene")."""
  if len(step_metas) != len(images):
    raise ValueError(f"story has {len(step_metas)} steps but {len(images)} images")
  return [parse.parse_image(im) == Scene.from_json(m["scene"])
          for m, im in zip(step_metas, images)]


def scene_partial(target: Scene | Mapping, image: np.ndarray) -> float:
  """Partial credit for a generated scene: the fraction of its five attributes (count, colour,
  position, shape, size) that `image` gets right, each scored as `t2i_attributes` scores a
  "full" prompt (every object stated), so 1 only for the exact scene and 0 for a blank."""
  spec = {"category": "full", "scene": Scene.from_json(target).to_json()}
  return float(np.mean(list(t2i_attributes(spec, image).values())))


def edit_partial(source_scene, instruction_meta, image: np.ndarray) -> float:
  """`scene_partial` of an edit's image against the edited scene."""
  return scene_partial(edited_scene(source_scene, instruction_meta), image)


def story_partial(step_metas, images) -> float:
  """Mean `scene_partial` over a story's steps (one image per step, as `score_story`)."""
  return float(np.mean([scene_partial(m["scene"], im)
                        for m, im in zip(step_metas, images, strict=True)]))


def text_overlap(pred_text: str, gold_text: str) -> float:
  """Partial credit for a text: difflib's ratio of the normalised word sequences (2 x the
  words of the longest matching blocks / the words of both; 1 = equal)."""
  return difflib.SequenceMatcher(None, normalise_text(pred_text).split(),
                                 normalise_text(gold_text).split()).ratio()


def normalise_text(text: str) -> str:
  """Lower case, punctuation dropped, whitespace collapsed."""
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def score_answer(pred_text: str, gold_text: str) -> bool:
  """Exact match after normalising case, whitespace and punctuation (answers and captions)."""
  return normalise_text(pred_text) == normalise_text(gold_text)


def _mean(xs: Iterable[float]) -> float | None:
  xs = list(xs)
  return float(np.mean(xs)) if xs else None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Per kind: per-category accuracy, counts and an overall number.

  t2i "overall" is GenEval's: the mean of its six category means (those present), so "full"
  is reported but not averaged in; t2i "attributes" = {attribute: {"acc", "n"}} over the
  records' "attrs" (`t2i_attributes`; n = the records that state it); "partial" = the mean
  of the records' "partial" where they have one (edit, story, caption). Stories report per-step
  accuracy and "overall" = all steps right. Other kinds: "overall" = mean over records."""
  out: dict[str, Any] = {}
  by_kind: dict[str, list] = {}
  for r in records:
    by_kind.setdefault(r["kind"], []).append(r)
  for kind, recs in sorted(by_kind.items()):
    cats: dict[str, list[float]] = {}
    for r in recs:
      ok = r["ok"]
      cats.setdefault(r["category"], []).append(float(all(ok) if isinstance(ok, list) else ok))
    res = {"n": len(recs), "categories": {c: {"acc": _mean(v), "n": len(v)}
                                          for c, v in sorted(cats.items())}}
    if kind == "t2i":
      geneval = [res["categories"][c]["acc"] for c in world.GENEVAL_CATEGORIES if c in cats]
      res["overall"] = _mean(geneval)
      attrs = [r["attrs"] for r in recs if "attrs" in r]
      res["attributes"] = {a: {"acc": _mean(float(x[a]) for x in attrs if a in x),
                               "n": sum(a in x for x in attrs)}
                           for a in ATTRIBUTES if any(a in x for x in attrs)}
    else:
      res["overall"] = _mean(v for vs in cats.values() for v in vs)
    if any("partial" in r for r in recs):
      res["partial"] = _mean(r["partial"] for r in recs if "partial" in r)
    if kind == "story":
      res["step_acc"] = _mean(float(s) for r in recs for s in r["ok"])
    out[kind] = res
  return out


def skills(summary: Mapping[str, Any]) -> dict[str, float]:
  """One number per skill of a `summarize` result (those its kinds give): GenEval, the mean
  of the t2i attributes, VQA, and for caption / edit / story the exact score and its
  "partial" (the learning curves and the skills test read these)."""
  out = {}
  if "t2i" in summary:
    out["geneval"] = summary["t2i"]["overall"]
    attrs = summary["t2i"].get("attributes") or {}
    if attrs:
      out["t2i_attributes"] = float(np.mean([a["acc"] for a in attrs.values()]))
  for kind in ("vqa", "caption", "edit", "story"):
    if kind in summary:
      out[kind] = summary[kind]["overall"]
      if "partial" in summary[kind]:
        out[f"{kind}_partial"] = summary[kind]["partial"]
  return out
