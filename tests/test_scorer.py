"""The world's exact scorer: parse accuracy on held-out renderings, no false passes, scores."""

import dataclasses

import numpy as np
import pytest

from mogao_jax import eval as ev
from mogao_jax.data.sources import world
from mogao_jax.data.sources.world import scene as scene_lib
from mogao_jax.eval import scorer


@pytest.fixture(scope="module")
def items():
  return ev.eval_prompts(0, 3)


@pytest.mark.parametrize("size,n", [(32, 300), (64, 120)])
def test_parse_recovers_held_out_scenes(size, n):
  rng = np.random.default_rng(size)
  scenes = [scene_lib.sample_in_split(rng, "eval", world.sample_scene) for _ in range(n)]
  acc = np.mean([ev.parse_image(world.render(s, size)) == s for s in scenes])
  assert acc >= 0.99, acc


def test_gold_outputs_score_one_everywhere(items):
  kinds = {it.kind for it in items}
  assert kinds == set(ev.EVAL_KINDS)
  assert {it.category for it in items if it.kind == "t2i"} == set(world.T2I_CATEGORIES)
  assert all(it.meta["split"] == "eval" for it in items)
  summary = ev.summarize([ev.score_item(it, ev.gold(it)) for it in items])
  assert set(summary) == kinds
  for kind, res in summary.items():
    assert res["overall"] == 1.0, (kind, res)
    assert all(c["acc"] == 1.0 for c in res["categories"].values())
  assert summary["story"]["step_acc"] == 1.0
  assert {k for k, res in summary.items() if "partial" in res} == {"edit", "story", "caption"}
  assert all(summary[k]["partial"] == 1.0 for k in ("edit", "story", "caption"))
  again = ev.eval_prompts(0, 3)
  assert [it.document.parts[-1] for it in again if it.kind == "vqa"] == [
      it.document.parts[-1] for it in items if it.kind == "vqa"]


def _junk(size):
  rng = np.random.default_rng(0)
  yield rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # uniform noise
  yield np.zeros((size, size, 3), np.uint8)  # blank (the background)
  yield np.full((size, size, 3), 255, np.uint8)
  yield np.full((size, size, 3), world.COLOURS["red"], np.uint8)  # one palette colour
  blocks = rng.integers(0, 6, (size // 8, size // 8))  # 8-px palette blocks
  yield np.array(list(world.COLOURS.values()), np.uint8)[blocks].repeat(8, 0).repeat(8, 1)


def test_no_prompt_satisfied_by_noise_or_blank(items):
  assert ev.parse_image(next(_junk(32))) is None
  for junk in _junk(32):
    for it in items:
      if it.kind in ("t2i", "edit"):
        assert not ev.score_item(it, junk)["ok"], (it.kind, it.category)
      elif it.kind == "story":
        assert not any(ev.score_item(it, [junk] * len(it.meta["steps"]))["ok"])


def _break(spec):
  """The scene of a t2i spec with one stated attribute made wrong."""
  scene = world.Scene.from_json(spec["scene"])
  a, rest = scene.objects[0], scene.objects[1:]
  cat = spec["category"]
  if cat == "counting":
    return world.Scene(rest)
  if cat == "position":  # mirror: every left/right (above/below) relation flips
    flip = lambda o: dataclasses.replace(o, col=2 - o.col, row=2 - o.row)
    return world.Scene(tuple(map(flip, scene.objects)))
  if cat in ("single_object", "two_object"):
    stated = {o["shape"] for o in spec["objects"]}
    shape = next(s for s in world.SHAPES if s not in stated)
    return world.Scene((dataclasses.replace(a, shape=shape),) + rest)
  colour = next(c for c in world.COLOURS if c != a.colour)  # colors, color_attr, full
  return world.Scene((dataclasses.replace(a, colour=colour),) + rest)


def test_t2i_fails_when_one_attribute_is_wrong(items):
  for it in (it for it in items if it.kind == "t2i"):
    assert ev.score_t2i(it.meta, ev.gold(it))
    assert not ev.score_t2i(it.meta, world.render(_break(it.meta), 32)), it.meta["prompt"]


def test_edit_fails_when_not_applied_or_wrong(items):
  for it in (it for it in items if it.kind == "edit"):
    source = it.document.parts[0].pixels
    assert not ev.score_edit(it.meta["source"], it.meta, source)  # nothing changed
    target = world.Scene.from_json(it.meta["target"])
    other = scene_lib.candidate_ops(target)[0]  # the edit plus one more change
    assert not ev.score_edit(it.meta["source"], it.meta,
                             world.render(world.apply_op(target, other), 32))


def test_scene_partial_is_the_share_of_attributes_right():
  a = world.Object(row=0, col=0, shape="circle", colour="red", size="small")
  b = world.Object(row=1, col=1, shape="square", colour="blue", size="large")
  target = world.Scene((a, b))
  render = lambda *objs: world.render(world.Scene(objs), 32)  # noqa: E731
  assert scorer.scene_partial(target, render(a, b)) == 1.0
  assert scorer.scene_partial(target, render(a, dataclasses.replace(b, colour="green"))) == 0.8
  assert scorer.scene_partial(target, render(a, dataclasses.replace(b, row=2))) == 0.8
  assert scorer.scene_partial(target, render(a)) == 0.0  # count and every multiset wrong
  assert all(scorer.scene_partial(target, j) == 0.0 for j in _junk(32))


def test_partial_edit_and_story_between_exact_and_junk(items):
  for it in (it for it in items if it.kind == "edit"):
    target = world.Scene.from_json(it.meta["target"])
    # One more change that keeps the object count (an added or removed object fails count
    # and every multiset, so all five attributes): four of five right.
    same_count = [world.apply_op(target, op) for op in scene_lib.candidate_ops(target)]
    near = next(s for s in same_count if len(s.objects) == len(target.objects) and s != target)
    assert scorer.edit_partial(it.meta["source"], it.meta, ev.gold(it)) == 1.0
    assert scorer.edit_partial(it.meta["source"], it.meta, world.render(near, 32)) == 0.8
    noise, blank = list(_junk(32))[:2]
    assert scorer.edit_partial(it.meta["source"], it.meta, noise) == 0.0
    assert scorer.edit_partial(it.meta["source"], it.meta, blank) == 0.0
    assert all(scorer.edit_partial(it.meta["source"], it.meta, j) < 1.0 for j in _junk(32))
  it = next(it for it in items if it.kind == "story")
  imgs = ev.gold(it)
  assert scorer.story_partial(it.meta["steps"], imgs) == 1.0
  blank = [np.zeros_like(im) for im in imgs]
  assert scorer.story_partial(it.meta["steps"], blank) == 0.0


def test_text_overlap():
  gold = "a small red circle at the top left."
  assert scorer.text_overlap("A small red circle at the top left", gold) == 1.0
  near = scorer.text_overlap("a small blue circle at the top left.", gold)
  assert near == pytest.approx(2 * 7 / 16)  # 7 of 8 words in matching blocks
  assert scorer.text_overlap("", gold) == 0.0
  assert scorer.text_overlap("green green green", gold) == 0.0


def test_story_scores_each_step(items):
  it = next(it for it in items if it.kind == "story")
  imgs = ev.gold(it)
  assert ev.score_story(it.meta["steps"], imgs) == [True] * len(imgs)
  assert ev.score_story(it.meta["steps"], imgs[::-1])[0] is False
  with pytest.raises(ValueError, match="steps"):
    ev.score_story(it.meta["steps"], imgs[:1])


def test_answers_and_summary():
  assert ev.score_answer(" Top  Left. ", "top left")
  assert ev.score_answer("A large red circle, and a blue square.",
                         "a large red circle and a blue square")
  assert not ev.score_answer("top", "top left")
  recs = [{"kind": "t2i", "category": "counting", "ok": True},
          {"kind": "t2i", "category": "counting", "ok": False},
          {"kind": "t2i", "category": "colors", "ok": True},
          {"kind": "t2i", "category": "full", "ok": False},
          {"kind": "story", "category": "story", "ok": [True, False]},
          {"kind": "story", "category": "story", "ok": [True, True]}]
  s = ev.summarize(recs)
  assert s["t2i"]["categories"]["counting"] == {"acc": 0.5, "n": 2}
  assert s["t2i"]["overall"] == 0.75  # GenEval: mean of its categories; "full" apart
  assert s["story"]["overall"] == 0.5 and s["story"]["step_acc"] == 0.75


# --- per-attribute t2i scores (coloured blobs) ----------------------------------------------

_STATES = {"single_object": {"count", "shape"}, "two_object": {"count", "shape"},
           "counting": {"count", "shape"}, "colors": {"count", "colour", "shape"},
           "position": {"count", "shape"}, "color_attr": {"count", "colour", "shape"},
           "full": set(ev.ATTRIBUTES)}


def _t2i(items):
  return [it for it in items if it.kind == "t2i"]


def _replace_all(spec, **change):
  """The image of a t2i spec's scene with every object changed by change[attr](object)."""
  scene = world.Scene.from_json(spec["scene"])
  return world.render(world.Scene(tuple(
      dataclasses.replace(o, **{k: f(o) for k, f in change.items()}) for o in scene.objects)), 32)


def _ragged(scene, size=32):
  """Every object as a plus sign of its colour and extent in its cell: no world shape."""
  img = np.zeros((size, size, 3), np.uint8)
  for o in scene.objects:
    cy, cx = (scene_lib.CENTRES[o.row] * size, scene_lib.CENTRES[o.col] * size)
    h = scene_lib.SIZES[o.size] * size / 2
    y0, y1, x0, x1 = (int(round(v)) for v in (cy - h, cy + h, cx - h, cx + h))
    t0, t1 = (int(round(v)) for v in (cy - h / 3, cy + h / 3))
    u0, u1 = (int(round(v)) for v in (cx - h / 3, cx + h / 3))
    img[t0:t1, x0:x1] = img[y0:y1, u0:u1] = world.COLOURS[o.colour]
  return img


def test_attributes_stated_per_category(items):
  for it in _t2i(items):
    assert set(ev.stated_attributes(it.meta)) == _STATES[it.category], it.category
    assert set(ev.score_item(it, ev.gold(it))["attrs"]) == _STATES[it.category]
  with pytest.raises(ValueError, match="unknown t2i category"):
    ev.stated_attributes({"category": "nope"})


def test_blobs_and_attributes_exact_on_held_out_renderings():
  its = ev.eval_prompts(0, 29, kinds=("t2i",))
  assert len(its) >= 200
  for it in its[:50]:  # the blobs are the scene, attribute for attribute
    scene = world.Scene.from_json(it.meta["scene"])
    blobs = ev.parse_blobs(ev.gold(it))
    assert sorted((b.row, b.col, b.shape, b.colour, b.size) for b in blobs) == sorted(
        (o.row, o.col, o.shape, o.colour, o.size) for o in scene.objects)
  recs = [ev.score_item(it, ev.gold(it)) for it in its]
  attrs = ev.summarize(recs)["t2i"]["attributes"]
  assert list(attrs) == list(ev.ATTRIBUTES)
  for a, v in attrs.items():
    assert v["acc"] >= 0.99, (a, v)
    assert v["n"] == sum(a in _STATES[it.category] for it in its)


def test_attributes_false_on_blank_and_noise(items):
  junk = list(_junk(32))
  for img in junk[:3]:  # noise, black, white: no blob
    assert ev.parse_blobs(img) == []
  for it in _t2i(items):
    for img in junk[:3]:
      attrs = ev.t2i_attributes(it.meta, img)
      assert not any(attrs.values()), (it.category, attrs)
    for img in junk[3:]:  # one palette colour everywhere, palette blocks: never the shapes
      assert not ev.t2i_attributes(it.meta, img)["shape"], it.category


def test_attributes_wrong_shape_right_blobs(items):
  for it in _t2i(items):
    stated = {o["shape"] for o in it.meta["objects"]}
    other = next(s for s in world.SHAPES if s not in stated)  # e.g. squares for circles
    scene = world.Scene.from_json(it.meta["scene"])
    for img in (_replace_all(it.meta, shape=lambda o, s=other: s), _ragged(scene)):
      attrs = ev.t2i_attributes(it.meta, img)
      assert attrs.pop("shape") is False, it.meta["prompt"]
      assert all(attrs.values()), (it.meta["prompt"], attrs)
      assert not ev.score_t2i(it.meta, img)
  assert {b.shape for b in ev.parse_blobs(_ragged(scene))} == {None}


def test_attributes_wrong_colour_right_blobs(items):
  for it in _t2i(items):
    scene = world.Scene.from_json(it.meta["scene"])
    other = next(c for c in world.COLOURS if c not in {o.colour for o in scene.objects})
    attrs = ev.t2i_attributes(it.meta, _replace_all(it.meta, colour=lambda o, c=other: c))
    stated = "colour" in _STATES[it.category]
    assert attrs.pop("colour", None) is (False if stated else None), it.meta["prompt"]
    assert all(attrs.values()), (it.meta["prompt"], attrs)


def test_attributes_relation_between_coloured_objects():
  scene = world.Scene((world.Object(1, 0, "circle", "red", "small"),
                       world.Object(1, 2, "square", "blue", "small")))
  spec = {"category": "position", "relation": "left", "scene": scene.to_json(),
          "objects": [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]}
  assert ev.t2i_attributes(spec, world.render(scene, 32)) == {
      "count": True, "colour": True, "position": True, "shape": True}
  assert not ev.t2i_attributes(spec | {"relation": "right"}, world.render(scene, 32))["position"]


def test_attribute_summary():
  recs = [{"kind": "t2i", "category": "colors", "ok": False,
           "attrs": {"count": True, "colour": False, "shape": True}},
          {"kind": "t2i", "category": "counting", "ok": True,
           "attrs": {"count": True, "shape": True}},
          {"kind": "t2i", "category": "full", "ok": False}]  # an old record: no attrs
  attrs = ev.summarize(recs)["t2i"]["attributes"]
  assert attrs == {"count": {"acc": 1.0, "n": 2}, "colour": {"acc": 0.0, "n": 1},
                   "shape": {"acc": 1.0, "n": 2}}
