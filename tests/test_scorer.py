"""The world's exact scorer: parse accuracy on held-out renderings, no false passes, scores."""

import dataclasses

import numpy as np
import pytest

from mogao_jax import eval as ev
from mogao_jax.data.sources import world
from mogao_jax.data.sources.world import scene as scene_lib


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
