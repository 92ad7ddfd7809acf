"""The raw-record schema (data/records.py), resolution buckets, truncation, issue counting in
the packer (and through its checkpointed state), condition dropout, and a non-square image
document through the packer and the model's forward pass."""

import functools
import io
import json

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mogao_jax.data import documents
from mogao_jax.data import images
from mogao_jax.data import encoding
from mogao_jax.data import packing
from mogao_jax.data import records
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data import transforms
from mogao_jax.data.batch import Kind
from mogao_jax.data.sources import world
from mogao_jax.train import step
from mogao_jax.model.mogao import Mogao
from tests import modelkit
from tests.configs import tiny_config

P, PD = 4, 48
T = documents.Text


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(128, world.world_text_corpus(100))


def _png(h, w, seed=0) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(
      buf, "PNG")
  return buf.getvalue()


def _img(h=16, w=16, generate=False, value=100):
  return documents.Image(np.full((h, w, 3), value, np.uint8), generate=generate)


# ------------------------------------------------------------------------------ dumps / loads

def test_dumps_loads_roundtrip_keeps_bytes_and_types():
  rec = {"id": "d1", "kind": "t2i", "meta": {"score": np.float32(0.5), "tags": ["a", "b"]},
         "parts": [{"type": "text", "text": "héllo ✓"},
                   {"type": "image", "bytes": _png(20, 30), "generate": True}]}
  blob = records.dumps(rec)
  assert isinstance(blob, bytes) and len(blob) < len(_png(20, 30)) + 200  # binary, no base64
  back = records.loads(blob)
  assert back["parts"][1]["bytes"] == _png(20, 30) and back["parts"][0]["text"] == "héllo ✓"
  assert back["meta"] == {"score": 0.5, "tags": ["a", "b"]}
  assert records.loads(json.dumps({"id": "x", "parts": []}).encode()) == {"id": "x", "parts": []}
  doc = records.to_document(blob, image_root=None, resolution=[(16, 24)], source="ar")
  assert doc.kind == "t2i" and doc.images[0].generate and doc.images[0].pixels.shape == (16, 24, 3)
  assert doc.meta["score"] == 0.5 and doc.meta[records.SOURCE] == "ar" and doc.meta["issues"] == []


def test_from_document_roundtrip():
  px = np.random.default_rng(1).integers(0, 256, (16, 8, 3), np.uint8)
  doc = documents.Document([T("a"), documents.Image(px, generate=True)], kind="t2i",
                           meta={"scene": 3})
  rec = records.from_document(doc, "w-1")
  back = records.to_document(records.dumps(rec), image_root=None, resolution=None)
  assert back.kind == "t2i" and back.meta["scene"] == 3 and back.parts[0] == T("a")
  np.testing.assert_array_equal(back.images[0].pixels, px)  # PNG is lossless, no resize
  assert back.images[0].generate


def test_resolution_from_config():
  d = ml_collections.ConfigDict(dict(image_size=32, patch_size=4))
  assert records.Resolution.from_config(d).buckets == ((32, 32),)  # the world's default
  d.image_buckets = ((32, 32), (24, 40))
  d.image_min_side = 2
  res = records.Resolution.from_config(d)
  assert res.buckets == ((32, 32), (24, 40)) and res.min_side == 2 and res.draft_side == 40
  d.image_buckets = ((32, 30),)
  with pytest.raises(ValueError, match="image_buckets"):
    records.Resolution.from_config(d)
  with pytest.raises(ValueError, match="vit_grid"):
    records.check_resolution_fits(records.as_resolution([(16, 64)]), 4, vit_grid=8)


# -------------------------------------------------------------------------------- buckets

def test_nearest_bucket_keeps_aspect_ratio():
  b = [(16, 16), (16, 32), (32, 16), (32, 32)]
  assert images.nearest_bucket(100, 210, b) == (16, 32)
  assert images.nearest_bucket(300, 140, b) == (32, 16)
  assert images.nearest_bucket(10, 10, b) == (16, 16)  # same aspect: the nearer area
  assert images.nearest_bucket(900, 900, b) == (32, 32)


def test_fit_to_bucket_resizes_then_centre_crops():
  x = np.tile((np.arange(64) * 4).astype(np.uint8)[None, :, None], (32, 1, 3))  # column ramp
  out = images.fit_to_bucket(x, (16, 16))  # 32x64 -> 16x32 -> centre 16 columns = cols 16..47
  assert out.shape == (16, 16, 3)
  assert abs(int(out[0, 0, 0]) - 4 * 16.5) <= 6 and abs(int(out[0, -1, 0]) - 4 * 46.5) <= 6
  same = np.zeros((16, 16, 3), np.uint8)
  assert images.fit_to_bucket(same, (16, 16)) is same  # world images pass through untouched
  up = images.to_bucket(np.full((9, 20, 3), 7, np.uint8), [(16, 32), (16, 16)])
  assert up.shape == (16, 32, 3) and (up == 7).all()


# ------------------------------------------------------------------------ non-square images

def test_non_square_image_document_encodes_with_its_grid(tok):
  doc = documents.Document([T("a red circle."), _img(8, 16), T("the same"),
                            _img(16, 8, generate=True)])
  e = encoding.encode_document(doc, tok, P)
  for st, kind, img, (gh, gw) in (("txt", Kind.VIT, 1, (2, 4)), ("vis", Kind.CVAE, 1, (2, 4)),
                                  ("vis", Kind.NVAE, 2, (4, 2))):
    m = (e[f"{st}_kind"] == kind) & (e[f"{st}_image"] == img)
    pos = e[f"{st}_pos"][m]
    assert m.sum() == gh * gw and len(set(pos[:, 0])) == 1
    assert sorted(map(tuple, pos[:, 1:])) == [(r, c) for r in range(gh) for c in range(gw)]


def test_non_square_document_packs_and_runs_forward(tok):
  c = tiny_config()  # image_size 16, patch 4, vit_grid 4, l_txt = l_vis = 64
  model = Mogao.from_config(c)
  params = modelkit.perturbed_params(c, model)
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, (8, 16, 3), np.uint8)  # 2 x 4 patches
  tall = rng.integers(0, 256, (16, 8, 3), np.uint8)  # 4 x 2 patches
  doc = documents.Document([T("a red circle."), documents.Image(wide), T("then"),
                            documents.Image(tall, generate=True)])
  pk = packing.TwoStreamPacker(c.data.l_txt, c.data.l_vis, PD, PD, 1)
  assert pk.add(encoding.encode_document(doc, tok, P)) is None
  row = {k: v[None] for k, v in pk.pop_oldest().items()}
  n_ids = c.data.l_txt + c.data.l_vis + 1
  t_BN = jnp.full((1, n_ids), 0.5, jnp.float32)
  noise = jnp.asarray(rng.normal(size=row["vis_latent"].shape), jnp.float32)
  losses = jax.jit(functools.partial(step.per_slot_losses, model))
  ce, se = losses(params, row, t_BN, noise)
  ce, se = np.asarray(ce), np.asarray(se)
  nvae = row["vis_kind"][0] == Kind.NVAE
  assert nvae.sum() == 8 and np.isfinite(ce).all() and np.isfinite(se).all()
  assert (ce[0][row["txt_loss_w"][0] > 0] > 0).all() and (se[0][nvae] > 0).all()
  # the context image's (H, W) matter: the same patches laid out 4 x 2 instead of 2 x 4
  # (positions transposed) change what the generation image's velocity reads.
  moved = {k: v.copy() for k, v in row.items()}
  vit = moved["txt_kind"][0] == Kind.VIT
  moved["txt_pos"][0, vit, 1:] = moved["txt_pos"][0, vit, 1:][:, ::-1]
  cvae = moved["vis_kind"][0] == Kind.CVAE
  moved["vis_pos"][0, cvae, 1:] = moved["vis_pos"][0, cvae, 1:][:, ::-1]
  _, se2 = losses(params, moved, t_BN, noise)
  assert not np.allclose(np.asarray(se2)[0][nvae], se[0][nvae])


# ------------------------------------------------------------------------------ truncation

def test_long_text_document_is_truncated_at_a_token(tok):
  text = " ".join(["a red circle left of a blue square."] * 12)
  doc = documents.Document([T(text)], meta={"id": "long"})
  full = encoding.encode_document(doc, tok, P)
  assert encoding.doc_lengths(full)[0] > 40
  cut = encoding.encode_document(doc, tok, P, max_len=(40, 16))
  assert encoding.doc_lengths(cut) == (40, 0)
  np.testing.assert_array_equal(cut["txt_token"], full["txt_token"][:40])  # a prefix, no EOS
  assert cut["txt_token"][-1] != tok.eos_id and cut["txt_loss_w"][-1] == 0
  assert cut["doc"]["issues"] == [("doc/truncated", "long")]
  assert full["doc"]["issues"] == []


def test_truncation_never_cuts_an_image(tok):
  tail = " ".join(["two green triangles."] * 10)
  doc = documents.Document([T("draw"), _img(generate=True), T(tail)], meta={"id": "g"})
  cut = encoding.encode_document(doc, tok, P, max_len=(40, 16))
  nt, nv = encoding.doc_lengths(cut)
  assert nt <= 40 and nv == 16  # the whole generation image, its 16 NVAE patches
  assert (cut["txt_kind"] == Kind.VIT).sum() == 16  # text follows it, so it has a VIT copy
  assert cut["doc"]["issues"] == [("doc/truncated", "g")]
  full = encoding.encode_document(doc, tok, P)
  kept = cut["txt_token"][cut["txt_kind"] == Kind.TXT]
  np.testing.assert_array_equal(kept, full["txt_token"][full["txt_kind"] == Kind.TXT][:len(kept)])
  opens = np.nonzero(kept == tok.img_open_id)[0]
  assert len(opens) == 1 and kept[opens[0] + 1] == tok.img_close_id and len(kept) > opens[0] + 2


def test_first_image_must_fit_or_the_document_is_dropped(tok):
  pk = packing.TwoStreamPacker(64, 8, PD, PD, 2)
  for parts in ([_img(generate=True), T("after")],  # 16 NVAE slots > 8
                [T("before " * 40), _img(generate=True)]):  # text fits alone; image does not
    doc = documents.Document(parts, meta={records.ID: "big", records.SOURCE: "s"})
    e = encoding.encode_document(doc, tok, P, max_len=(64, 8))
    assert e["doc"]["issues"] == []  # left whole: the packer drops it
    assert pk.add(e) is None
  assert pk.stats["dropped_oversize"] == 2 and pk.stats["docs_packed"] == 0
  assert pk.stats["issues"] == {"doc/oversize": 2}
  assert pk.stats["issue_examples"]["doc/oversize"].startswith("big (")
  assert pk.stats["source_docs"] == {"s": 2} and pk.stats["source_packed"] == {}


# ------------------------------------------------------------------- counting in the packer

def _records():
  good = {"id": "ok", "parts": [{"type": "text", "text": "a red circle."},
                                {"type": "image", "bytes": _png(20, 40), "generate": True}]}
  broken = {"id": "br", "parts": [{"type": "text", "text": "two squares."},
                                  {"type": "image", "path": "missing.png"}]}
  useless = {"id": "no", "parts": []}
  out = []
  for i in range(40):
    rec = [good, broken, useless, b"{oops"][i % 4]
    out.append((("a", "b")[i % 2], rec if isinstance(rec, bytes) else {**rec, "id": f"{rec['id']}{i}"}))
  return out


def _to_enc(i, *, tok, recs, root):
  src, rec = recs[i]
  doc = records.to_document(rec, image_root=root, resolution=[(16, 16), (8, 16)], source=src,
                            origin=f"f:{i}")
  return encoding.encode_document(doc, tok, P, max_len=(64, 32))


def _stream(tok, root):
  recs = _records()
  ds = grain.MapDataset.range(len(recs)).map(
      functools.partial(_to_enc, tok=tok, recs=recs, root=root))
  return iter(packing.PackIterDataset(ds.to_iter_dataset(), l_txt=64, l_vis=32, patch_dim=PD,
                                      latent_dim=PD, open_rows=2))


def test_issues_counted_by_reason_and_source_and_restored(tok, tmp_path):
  it = _stream(tok, str(tmp_path))
  first = [next(it) for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))  # the checkpoint's JSON
  rest = list(it)
  stats = it.get_state()["stats"]
  assert stats["issues"] == {"image/missing_file": 10, "doc/empty": 10,
                             "record/undecodable": 10}
  assert stats["issue_examples"]["image/missing_file"] == (
      f"br1/parts/1: {tmp_path / 'missing.png'}")
  assert stats["issue_examples"]["doc/empty"] == "no2"
  assert stats["issue_examples"]["record/undecodable"].startswith("f:3 (")
  assert stats["source_docs"] == {"a": 20, "b": 20}
  assert stats["source_packed"] == {"a": 10, "b": 10}  # ok (even i: a) and br (odd i: b)
  assert stats["docs_packed"] == 20 and stats["dropped_empty"] == 20
  assert sum(len(set(np.unique(r["txt_segment"])) - {0}) for r in first + rest) == 20
  fresh = _stream(tok, str(tmp_path))
  fresh.set_state(state)
  again = list(fresh)
  assert len(again) == len(rest)
  for a, b in zip(again, rest):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert fresh.get_state()["stats"] == stats


def test_old_packer_state_without_issue_counters_restores(tok, tmp_path):
  it = _stream(tok, str(tmp_path))
  next(it)
  state = it.get_state()
  for k in packing.TwoStreamPacker.MAP_STAT_KEYS:
    del state["stats"][k]  # a checkpoint written before these counters existed
  fresh = _stream(tok, str(tmp_path))
  fresh.set_state(state)
  next(fresh)
  assert set(packing.TwoStreamPacker.MAP_STAT_KEYS) <= set(fresh.get_state()["stats"])


# ------------------------------------------------------------------------- condition dropout

def test_drop_condition():
  gen, ctx = _img(generate=True), _img()
  t2i = documents.Document([T("a red circle."), gen], kind="t2i", meta={"k": 1})
  rng = np.random.default_rng(0)
  assert transforms.drop_condition(t2i, rng, 0.0) is t2i
  out = transforms.drop_condition(t2i, rng, 1.0)
  assert out.parts == (gen,) and out.kind == "t2i"
  assert out.meta == {"k": 1, "cond_dropped": ("text",)} and t2i.meta == {"k": 1}
  caption = documents.Document([ctx, T("a red circle.")])
  assert transforms.drop_condition(caption, rng, 1.0) is caption  # nothing generated
  story = documents.Document([T("one"), gen, T("two"), gen, T("end")])
  assert transforms.drop_condition(story, rng, 1.0).parts == (gen, gen, T("end"))
  edit = documents.Document([ctx, T("make it blue"), gen])
  assert transforms.drop_condition(edit, rng, 0.0, p_image=1.0).parts == (T("make it blue"), gen)
  assert transforms.drop_condition(edit, rng, 1.0, p_image=1.0).parts == (gen,)
  hits = sum(transforms.drop_condition(t2i, np.random.default_rng(s), 0.25) is not t2i
             for s in range(2000))
  assert 400 < hits < 600
  with pytest.raises(ValueError, match="cond_dropout"):
    transforms.check_cond_dropout(1.5)


def test_drop_condition_as_a_grain_random_map_is_deterministic():
  docs = [documents.Document([T(f"prompt {i}"), _img(generate=True)]) for i in range(64)]
  def run():
    ds = grain.MapDataset.source(docs).random_map(
        functools.partial(transforms.drop_condition, p=0.5), seed=3)
    return [len(d.parts) for d in ds]
  a = run()
  assert a == run() and set(a) == {1, 2}


def test_apply_cond_dropout_from_config():
  docs = [documents.Document([T(f"prompt {i}"), _img(generate=True)]) for i in range(200)]
  ds = grain.MapDataset.source(docs)
  c = ml_collections.ConfigDict(dict(seed=0, data=dict(image_size=16)))
  assert transforms.apply_cond_dropout(ds, c) is ds  # default: no dropout, same stream
  c.data.cond_dropout = 0.2
  assert transforms.apply_cond_dropout(ds, c, "eval") is ds  # never on eval
  got = [len(d.parts) for d in transforms.apply_cond_dropout(ds, c)]
  assert 20 < got.count(1) < 60 and got == [len(d.parts)
                                            for d in transforms.apply_cond_dropout(ds, c)]
  c.data.cond_dropout = -0.1
  with pytest.raises(ValueError, match="config.data.cond_dropout"):
    transforms.apply_cond_dropout(ds, c)
