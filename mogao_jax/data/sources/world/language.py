"""Every sentence the world emits: captions, GenEval-style prompts, questions, edits, stories.

All text is lower case with "." or "?" at the end; captions list objects in canonical
(row-major) order, so a caption is a pure function of the scene and exact match is fair.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mogao_jax.data.sources.world import scene as scene_lib
from mogao_jax.data.sources.world.scene import Object, Scene

NUMBERS = ("zero", "one", "two", "three", "four")
# GenEval's six categories (its own tags) plus "full": the whole scene, attribute for attribute.
T2I_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position",
                  "color_attr", "full")
GENEVAL_CATEGORIES = T2I_CATEGORIES[:6]
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above",
             "below": "below"}
QUESTION_TYPES = ("colour", "shape", "size", "count", "where", "exists")
_DIR_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


def position_name(row: int, col: int) -> str:
  return "centre" if (row, col) == (1, 1) else f"{scene_lib.ROWS[row]} {scene_lib.COLS[col]}"


def where(row: int, col: int) -> str:
  pos = position_name(row, col)
  return "in the centre" if pos == "centre" else f"at the {pos}"


def phrase(obj: Object) -> str:
  return f"a {obj.size} {obj.colour} {obj.shape} {where(obj.row, obj.col)}"


def describe(scene: Scene) -> str:
  """"a large red circle at the top left, a small blue square in the centre and a ... ." """
  p = [phrase(o) for o in scene.objects]
  return (", ".join(p[:-1]) + " and " + p[-1] if len(p) > 1 else p[0]) + "."


def refer(scene: Scene, obj: Object, avoid: str = "") -> str | None:
  """The shortest unambiguous noun phrase for `obj` in `scene` that does not use the attribute
  `avoid` ("colour", "size" or "position"; a question must not give its answer away)."""
  for attrs in (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")):
    if avoid in attrs:
      continue
    if sum(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in scene.objects) == 1:
      return "the " + " ".join(getattr(obj, a) for a in attrs)
  # Cells are unique, so position always disambiguates.
  return None if avoid == "position" else f"the {obj.shape} {where(obj.row, obj.col)}"


# --- text-to-image prompts -------------------------------------------------------------------


def t2i_prompt(spec: Mapping[str, Any]) -> str:
  """The prompt of a t2i spec (see `kinds.t2i_spec`): what it states is what gets scored."""
  cat, objs = spec["category"], spec.get("objects", ())
  if cat == "single_object":
    return f"a {objs[0]['shape']}."
  if cat == "two_object":
    return f"a {objs[0]['shape']} and a {objs[1]['shape']}."
  if cat == "counting":
    return f"{NUMBERS[spec['count']]} {scene_lib.PLURALS[objs[0]['shape']]}."
  if cat == "colors":
    return f"a {objs[0]['colour']} {objs[0]['shape']}."
  if cat == "position":
    return f"a {objs[0]['shape']} {RELATIONS[spec['relation']]} a {objs[1]['shape']}."
  if cat == "color_attr":
    return " and ".join(f"a {o['colour']} {o['shape']}" for o in objs) + "."
  if cat == "full":
    return describe(Scene.from_json(spec["scene"]))
  raise ValueError(f"unknown t2i category {cat!r}; known: {T2I_CATEGORIES}")


# --- visual questions ------------------------------------------------------------------------


def question_answer(scene: Scene, qtype: str, rng: np.random.Generator) -> tuple[str, str] | None:
  """(question, answer) of `qtype` about a random object; None if `qtype` does not apply."""
  obj = scene.objects[int(rng.integers(len(scene.objects)))]
  if qtype == "colour":
    return f"what colour is {refer(scene, obj, 'colour')}?", obj.colour
  if qtype == "shape":
    return f"what shape is {where(obj.row, obj.col)}?", obj.shape
  if qtype == "size":
    return f"what size is {refer(scene, obj, 'size')}?", obj.size
  if qtype == "count":
    if rng.random() < 0.5:
      return "how many objects are there?", NUMBERS[len(scene.objects)]
    shape = scene_lib.SHAPES[int(rng.integers(len(scene_lib.SHAPES)))]
    n = sum(o.shape == shape for o in scene.objects)
    return f"how many {scene_lib.PLURALS[shape]} are there?", NUMBERS[n]
  if qtype == "where":
    ref = refer(scene, obj, "position")
    return (f"where is {ref}?", position_name(obj.row, obj.col)) if ref else None
  if qtype == "exists":
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:  # balanced yes/no, so "yes" is not a free answer
      colour, shape = obj.colour, obj.shape
    else:
      absent = [(k, s) for k in scene_lib.COLOURS for s in scene_lib.SHAPES
                if (k, s) not in present]
      colour, shape = absent[int(rng.integers(len(absent)))]
    return f"is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no"
  raise ValueError(f"unknown question type {qtype!r}; known: {QUESTION_TYPES}")


# --- edit instructions and story sentences ---------------------------------------------------


def op_text(scene: Scene, op: scene_lib.Op, style: str) -> str:
  """An op as an edit instruction (style "edit") or a story sentence (style "story")."""
  kind = op["op"]
  if kind == "add":
    obj = Object(*op["cell"], op["shape"], op["colour"], op["size"])
    if style == "edit":
      return f"add {phrase(obj)}."
    return f"a {obj.size} {obj.colour} {obj.shape} appears {where(obj.row, obj.col)}."
  obj = scene.at(*op["cell"])
  ref = refer(scene, obj)
  if style == "edit":
    return {"remove": lambda: f"remove {ref}.",
            "recolour": lambda: f"make {ref} {op.get('colour')}.",
            "resize": lambda: f"make {ref} {op.get('size')}.",
            "move": lambda: f"move {ref} {_DIR_PHRASE.get(op.get('direction'))}."}[kind]()
  if style == "story":
    grow = "grows" if op.get("size") == "large" else "shrinks"
    return {"remove": lambda: f"{ref} disappears.",
            "recolour": lambda: f"{ref} turns {op.get('colour')}.",
            "resize": lambda: f"{ref} {grow}.",
            "move": lambda: f"{ref} moves {_DIR_PHRASE.get(op.get('direction'))}."}[kind]()
  raise ValueError(f"unknown style {style!r}; known: edit, story")


def vocabulary_lines() -> list[str]:
  """Lines naming every word and punctuation form the templates can emit (tokenizer corpus)."""
  lines = [" ".join(scene_lib.SHAPES), " ".join(scene_lib.PLURALS.values()),
           " ".join(scene_lib.COLOURS), " ".join(scene_lib.SIZES), " ".join(NUMBERS),
           " ".join(where(r, c) for r in range(3) for c in range(3)),
           " ".join(RELATIONS.values()), " ".join(_DIR_PHRASE.values()), "yes no",
           "a circle, a square and a triangle.", "what colour is the circle?",
           "what shape is at the top left?", "what size is the red square?",
           "how many objects are there?", "how many triangles are there?",
           "where is the large red circle?", "what colour is the small circle?",
           "is there a blue square?",
           "add a small red circle in the centre.", "remove the circle at the top left.",
           "make the circle green.", "make the square small.", "move the triangle to the right.",
           "a small red circle appears in the centre.", "the square disappears.",
           "the circle turns blue.", "the triangle grows.", "the triangle shrinks.",
           "the circle moves up."]
  return lines
