"""The synthetic world, the tokenizer and patchify."""

import importlib
import itertools
import re

import numpy as np
import pytest

from mogao_jax.data import documents
from mogao_jax.data import images
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.sources import world
from mogao_jax.data.sources.world import scene as scene_lib

WEIGHTS = {"t2i": 0.3, "caption": 0.2, "vqa": 0.2, "edit": 0.15, "story": 0.15}
LAYOUT = {"t2i": "TG", "caption": "IT", "vqa": "ITT", "edit": "ITG"}  # story: (TG)+


def _same(a: documents.Document, b: documents.Document) -> bool:
  if a.kind != b.kind or len(a.parts) != len(b.parts) or a.meta != b.meta:
    return False
  for p, q in zip(a.parts, b.parts):
    if type(p) is not type(q):
      return False
    if isinstance(p, documents.Text) and p != q:
      return False
    if isinstance(p, documents.Image) and (p.generate != q.generate or
                                           not np.array_equal(p.pixels, q.pixels)):
      return False
  return True


def _layout(d: documents.Document) -> str:
  return "".join("T" if isinstance(p, documents.Text) else "GI"[not p.generate] for p in d.parts)


def _scenes(d: documents.Document) -> list[world.Scene]:
  m = d.meta
  if d.kind == "story":
    return [world.Scene.from_json(s["scene"]) for s in m["steps"]]
  if d.kind == "edit":
    return [world.Scene.from_json(m["source"]), world.Scene.from_json(m["target"])]
  return [world.Scene.from_json(m["scene"])]


def test_documents_deterministic_and_seeded():
  a = [world.make_document(0, i, 32, WEIGHTS) for i in range(20)]
  b = [world.make_document(0, i, 32, WEIGHTS) for i in range(20)]
  c = [world.make_document(1, i, 32, WEIGHTS) for i in range(20)]
  assert all(_same(x, y) for x, y in zip(a, b))
  assert sum(_same(x, y) for x, y in zip(a, c)) < 3


def test_every_attribute_occurs():
  rng = np.random.default_rng(0)
  scenes = [world.sample_scene(rng) for _ in range(300)]
  objs = [o for s in scenes for o in s.objects]
  assert {o.shape for o in objs} == set(world.SHAPES)
  assert {o.colour for o in objs} == set(world.COLOURS) and len(world.COLOURS) >= 6
  assert {o.size for o in objs} == set(world.SIZES)
  assert {(o.row, o.col) for o in objs} == {(r, c) for r in range(3) for c in range(3)}
  assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
  assert all(scene_lib.valid(s) for s in scenes)  # no overlaps, a gap between objects
  for cat in world.T2I_CATEGORIES:  # counting: several objects of one shape
    spec = world.t2i_spec(rng, cat, "train")
    scene = world.Scene.from_json(spec["scene"])
    if cat == "counting":
      assert len({o.shape for o in scene.objects}) == 1 and spec["count"] >= 2


def test_kinds_layouts_and_meta():
  docs = [world.make_document(0, i, 32, WEIGHTS) for i in range(80)]
  assert {d.kind for d in docs} == set(world.DOC_KINDS)
  for d in docs:
    got = _layout(d)
    if d.kind == "story":  # 2-4 x (sentence, generated image after that step)
      assert got in ("TG" * 2, "TG" * 3, "TG" * 4), got
    else:
      assert got == LAYOUT[d.kind], (d.kind, got)
    for img, scene in zip(d.images[-len(_scenes(d)):], _scenes(d)):
      np.testing.assert_array_equal(img.pixels, world.render(scene, 32))
  t2i = [d for d in docs if d.kind == "t2i"]
  assert all(d.meta["category"] in world.T2I_CATEGORIES and d.parts[0].text == d.meta["prompt"]
             for d in t2i)
  for d in (d for d in docs if d.kind == "edit"):  # source image, instruction, edited image
    assert world.apply_op(d.meta["source"], d.meta["edit"]) == world.Scene.from_json(
        d.meta["target"])
  assert {world.make_document(3, i, 32, {"vqa": 1.0}).kind for i in range(10)} == {"vqa"}
  steps = {len(world.make_document(0, i, 32, {"story": 1.0}, story_steps=(3, 3)).images)
           for i in range(5)}
  assert steps == {3}


def test_train_eval_disjoint_by_scene():
  train = {s.key() for i in range(150) for s in _scenes(world.make_document(0, i, 32, WEIGHTS))}
  held = {s.key() for i in range(150)
          for s in _scenes(world.make_document(0, i, 32, WEIGHTS, split="eval"))}
  assert train and held and not train & held
  rng = np.random.default_rng(0)
  frac = np.mean([world.split_of(world.sample_scene(rng)) == "eval" for _ in range(2000)])
  assert 0.07 < frac < 0.13


def test_unknown_keys_are_named():
  with pytest.raises(ValueError, match="config.data.doc_weights.*video"):
    world.make_document(0, 0, 32, {"t2i": 1.0, "video": 1.0})
  with pytest.raises(ValueError, match="config.data.t2i_weights.*shapes"):
    world.make_document(0, 0, 32, {"t2i": 1.0}, t2i_weights={"shapes": 1.0})
  with pytest.raises(ValueError, match="config.data.story_steps"):
    world.make_document(0, 0, 32, {"story": 1.0}, story_steps=(3, 2))
  with pytest.raises(ValueError, match="split"):
    world.make_document(0, 0, 32, {"t2i": 1.0}, split="test")


def test_render_colours_sizes_and_antialiasing():
  obj = world.Object(1, 1, "square", "red", "large")
  px = world.render(world.Scene((obj,)), 32)
  assert px.shape == (32, 32, 3) and px.dtype == np.uint8
  assert tuple(px[16, 16]) == world.COLOURS["red"] and tuple(px[0, 0]) == world.BACKGROUND
  on = (px != 0).any(-1)
  assert 13 <= on.sum(0).max() <= 14  # large = 12.8 px at 32 px: 3.2 patches of 4 px
  circle = world.render(world.Scene((world.Object(0, 0, "circle", "blue", "large"),)), 32)
  blues = {int(v) for v in circle[..., 2].ravel()}
  assert len(blues - {0, world.COLOURS["blue"][2]}) > 0  # partial-coverage edge pixels
  for size in (64, 128):
    assert world.render(world.Scene((obj,)), size).shape == (size, size, 3)


def test_cached_render_is_the_painted_render_bit_for_bit():
  # render() adds each object's cached per-pixel sample counts (render.py); every pixel must be
  # what painting every sample and averaging gives, at every size and for every object.
  render_lib = importlib.import_module("mogao_jax.data.sources.world.render")
  rng = np.random.default_rng(7)
  for size, n in ((12, 20), (32, 200), (48, 20), (64, 40), (128, 10)):
    for _ in range(n):
      s = world.sample_scene(rng)
      np.testing.assert_array_equal(world.render(s, size), render_lib._render_painted(s, size))
  for r, c, shape, size in itertools.product(range(3), range(3), world.SHAPES, world.SIZES):
    s = world.Scene((world.Object(r, c, shape, "cyan", size),))
    for px in (32, 40):
      np.testing.assert_array_equal(world.render(s, px), render_lib._render_painted(s, px))
  # Objects that overlap (no world scene does: scene.valid) are painted, the last on top.
  a, b = world.Object(1, 1, "square", "red", "large"), world.Object(1, 2, "circle", "blue", "large")
  both = world.render(world.Scene((a, b)), 32)
  assert (both[..., 0] == world.COLOURS["red"][0]).any() and (both[..., 2] > 0).any()
  np.testing.assert_array_equal(both, render_lib._render_painted(world.Scene((a, b)), 32))
  # The cache hands out read-only counts, so a render cannot corrupt the next one.
  s = world.Scene((a,))
  first = world.render(s, 32)
  first[:] = 255
  np.testing.assert_array_equal(world.render(s, 32), render_lib._render_painted(s, 32))
  with pytest.raises(ValueError):
    render_lib._counts(1, 1, "square", "large", 32)[2][0, 0] = 0
  with pytest.raises(ValueError, match="unknown shape 'star'"):
    world.render(world.Scene((world.Object(0, 0, "star", "red", "small"),)), 32)


def test_lazy_add_ops_are_every_add_in_order():
  # sample_op indexes the "add" ops lazily (scene._Adds); the stream of documents depends on
  # their order, so it must be the eager (cell, shape, colour, size) product.
  rng = np.random.default_rng(11)
  for scene in [world.Scene(())] + [world.sample_scene(rng) for _ in range(20)]:
    free = [(r, c) for r in range(3) for c in range(3) if scene.at(r, c) is None]
    eager = [{"op": "add", "cell": [r, c], "shape": s, "colour": k, "size": z}
             for r, c in free for s in world.SHAPES for k in world.COLOURS for z in world.SIZES]
    adds, others = scene_lib._ops(scene, world.OPS)
    assert list(adds) == (eager if len(scene.objects) < world.MAX_OBJECTS else [])
    assert [adds[i] for i in range(len(adds))] == list(adds)
    assert {op["op"] for op in others} <= set(world.OPS) - {"add"}
    assert scene_lib._raw_ops(scene, ("add",)) == list(adds)


def test_corpus_covers_every_word():
  def words(text):  # words and punctuation marks
    return set(re.findall(r"[a-z]+|[^\sa-z]", text))
  vocab = words(" ".join(world.world_text_corpus(0)))  # the fixed lines alone
  for i in range(200):
    for p in world.make_document(5, i, 32, WEIGHTS, story_steps=(2, 4)).parts:
      if isinstance(p, documents.Text):
        assert words(p.text) <= vocab, p.text


def test_tokenizer_roundtrip_specials_and_cache(tmp_path):
  corpus = world.world_text_corpus(200)
  tok = tokenizer_lib.train_or_load(str(tmp_path), 128, corpus)
  assert tok.vocab_size <= 128 and tok.pad_id == 0
  assert len({tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.img_open_id,
              tok.img_close_id}) == 6
  for line in corpus[:50]:
    ids = tok.encode(line)
    assert tok.unk_id not in ids and tok.decode(ids) == line
  ids = tok.encode("a red circle. <img></img>")  # typed delimiters stay text (issue 30)
  assert tok.img_open_id not in ids and tok.img_close_id not in ids
  assert tokenizer_lib.train(128, corpus).model_proto == tok.model_proto  # deterministic
  again = tokenizer_lib.train_or_load(str(tmp_path), 128, [])  # cached: no training
  assert again.model_proto == tok.model_proto
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer_lib.train_or_load(str(tmp_path), 256, corpus)
  with pytest.raises(ValueError, match="config.model.vocab_size"):
    tokenizer_lib.check_vocab(tok, tok.vocab_size - 1)


def test_patchify_layout_roundtrip_and_errors():
  px = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  p = images.patchify(px, 4)
  assert p.shape == (16, 48) and p.dtype == np.float32
  assert p.min() >= -1 and p.max() <= 1
  np.testing.assert_allclose(p[1 * 4 + 2], px[4:8, 8:12].reshape(-1) / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(images.unpatchify(p, 4), px)
  wide = px[:8]  # non-square: an 8 x 16 image is a 2 x 4 patch grid, row-major
  pw = images.patchify(wide, 4)
  assert pw.shape == (8, 48)
  np.testing.assert_allclose(pw[1 * 4 + 3], wide[4:8, 12:16].reshape(-1) / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(images.unpatchify(pw, (2, 4)), wide)
  rows, cols = images.patch_rows_cols((2, 4))
  assert list(rows) == [0] * 4 + [1] * 4 and list(cols) == [0, 1, 2, 3] * 2
  assert not rows.flags.writeable and images.patch_rows_cols((2, 4))[0] is rows  # one, shared
  with pytest.raises(ValueError, match="square"):  # the sampler's check stays square-only
    images.validate(px[:, :12], 4)
  for bad, msg in ((px[:15, :15], "divisible"), (px[:, :14], "divisible"),
                   (px.astype(np.float32), "uint8"), (px[..., :2], "3")):
    with pytest.raises(ValueError, match=msg):
      images.patchify(bad, 4)
