"""ECTF document encoding and the two-stream packer (plain and as a Grain transform)."""

import json

import grain
import numpy as np
import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import documents
from mogao_jax.data import encoding
from mogao_jax.data import images
from mogao_jax.data import packing
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.batch import Kind
from mogao_jax.data.sources import world

S, P, PD = 16, 4, 48  # image size, patch size, patch dim: 16 patches per image
WEIGHTS = {"t2i": 0.5, "caption": 0.3, "vqa": 0.2}


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(128, world.world_text_corpus(100))


def _img(generate, value=100):
  return documents.Image(np.full((S, S, 3), value, np.uint8), generate=generate)


def _pack_all(encs, l_txt, l_vis, open_rows=3):
  """Rows, each with the encoded docs of its segments 1, 2, ..; and the packer."""
  pk = packing.TwoStreamPacker(l_txt, l_vis, PD, PD, open_rows)
  out = []
  for i, e in enumerate(encs):
    oldest = [encs[s] for s in pk.rows[0].seqs] if pk.rows else None
    row = pk.add(e, i)
    if row is not None:
      out.append((row, oldest))
  while pk.rows:
    docs = [encs[s] for s in pk.rows[0].seqs]
    out.append((pk.pop_oldest(), docs))
  return out, pk


def _check_row(row, docs, tok, l_txt, l_vis):
  batch_lib.check_batch(row, l_txt, l_vis, PD, PD)
  for st in ("txt", "vis"):
    seg, kind = row[f"{st}_segment"], row[f"{st}_kind"]
    np.testing.assert_array_equal(seg == 0, kind == Kind.PAD)
    pad = seg == 0
    for f in row:
      if f.startswith(st):
        assert not row[f][pad].any(), f"{f} nonzero on padding"
    for k, doc in enumerate(docs, start=1):  # whole documents, nothing cut
      assert (seg == k).sum() == len(doc[f"{st}_kind"])
    assert set(np.unique(seg)) <= set(range(len(docs) + 1))
  vk, vw = row["vis_kind"], row["vis_loss_w"]
  assert (vw[vk == Kind.NVAE] == 1).all() and (vw[vk != Kind.NVAE] == 0).all()
  img_pos = {}  # image id -> (segment, set of (T, H, W)) per copy
  for st in ("txt", "vis"):
    for i in np.unique(row[f"{st}_image"][row[f"{st}_image"] > 0]):
      m = row[f"{st}_image"] == i
      assert len(np.unique(row[f"{st}_segment"][m])) == 1
      for kind in np.unique(row[f"{st}_kind"][m]):
        km = m & (row[f"{st}_kind"] == kind)
        pos = row[f"{st}_pos"][km]
        assert (pos[:, 1:] >= 0).all() and (pos[:, 1:] < S // P).all()
        got = (int(row[f"{st}_segment"][km][0]), frozenset(map(tuple, pos)))
        assert len(got[1]) == km.sum() == (S // P) ** 2
        assert img_pos.setdefault(int(i), got) == got  # all copies share segment and (T,H,W)
  assert sorted(img_pos) == list(range(1, len(img_pos) + 1))  # row-unique ids 1, 2, ..
  for k in range(1, len(docs) + 1):
    _check_text(row, k, tok, img_pos)


def _check_text(row, k, tok, img_pos):
  m = (row["txt_segment"] == k) & (row["txt_kind"] == Kind.TXT)
  tokens, targets = row["txt_token"][m], row["txt_target"][m]
  t, w = row["txt_pos"][m][:, 0], row["txt_loss_w"][m]
  assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
  np.testing.assert_array_equal(targets[:-1], tokens[1:])
  np.testing.assert_array_equal(w[:-1], (tokens[1:] != tok.img_close_id).astype(np.float32))
  assert w[-1] == 0 and (row["txt_loss_w"][row["txt_kind"] == Kind.VIT] == 0).all()
  assert (row["txt_pos"][m][:, 1:] == 0).all()
  opens = np.nonzero(tokens == tok.img_open_id)[0]
  np.testing.assert_array_equal(tokens[opens + 1], tok.img_close_id)
  np.testing.assert_array_equal(t[opens + 1], t[opens] + 2)  # the image takes one T step
  img_ts = sorted(next(iter(p))[0] for seg, p in img_pos.values() if seg == k)
  np.testing.assert_array_equal(img_ts, t[opens] + 1)
  steps = np.diff(t)
  assert set(steps) <= {1, 2} and (steps == 2).sum() == len(opens)


def test_world_rows_are_consistent(tok):
  encs = [encoding.encode_document(world.make_document(0, i, S, WEIGHTS), tok, P)
          for i in range(300)]
  rows, pk = _pack_all(encs, 96, 64)
  assert sum(len(d) for _, d in rows) == 300 == pk.stats["docs_packed"]
  assert len(rows) == pk.stats["rows"]
  for row, docs in rows:
    _check_row(row, docs, tok, 96, 64)
  eff = pk.efficiency()
  real_txt = sum((r["txt_segment"] > 0).sum() for r, _ in rows)
  assert eff["txt"] == pytest.approx(real_txt / (96 * len(rows)))
  assert 0.5 < eff["txt"] <= 1 and 0 < eff["vis"] <= 1


def test_image_slots_carry_their_own_patches(tok):
  # The encoder fills each stream once from its chunks (encoding._concat): every image's VIT,
  # CVAE and NVAE slots must hold that image's patchify, in its (H, W) order; text slots none.
  for i in range(60):
    doc = world.make_document(3, i, S, WEIGHTS | {"edit": 0.2, "story": 0.2})
    e = encoding.encode_document(doc, tok, P)
    for img_id, img in enumerate(doc.images, start=1):
      ref = images.patchify(img.pixels, P)
      for st, data in (("txt", "txt_patch"), ("vis", "vis_latent")):
        m = e[f"{st}_image"] == img_id
        for kind in np.unique(e[f"{st}_kind"][m]):
          km = m & (e[f"{st}_kind"] == kind)
          np.testing.assert_array_equal(e[data][km], ref)
          h, w = e[f"{st}_pos"][km][:, 1], e[f"{st}_pos"][km][:, 2]
          np.testing.assert_array_equal(h * (S // P) + w, np.arange(len(ref)))
    assert not e["txt_patch"][e["txt_kind"] == Kind.TXT].any()
    # The image counts the packer reads (a bincount), against np.unique of the image ids.
    assert encoding.vit_images(e) == len(np.unique(e["txt_image"][e["txt_kind"] == Kind.VIT]))
    assert encoding.vision_images(e) == len(np.unique(e["vis_image"][e["vis_kind"] != Kind.PAD]))


def _copies(tok, doc):
  e = encoding.encode_document(doc, tok, P)
  n = (S // P) ** 2
  count = lambda st, kind, img: int(((e[f"{st}_kind"] == kind) & (e[f"{st}_image"] == img)).sum())
  return [tuple(count(st, kd, i) // n for st, kd in (("txt", Kind.VIT), ("vis", Kind.CVAE),
                                                     ("vis", Kind.NVAE)))
          for i in range(1, len(doc.images) + 1)]


def test_only_the_copies_something_reads(tok):
  t = documents.Text
  assert _copies(tok, documents.Document([t("a red circle."), _img(True)])) == [(0, 0, 1)]
  assert _copies(tok, documents.Document([_img(False), t("a red circle.")])) == [(1, 0, 0)]
  doc = documents.Document([t("red"), _img(True), t("and"), _img(True)])
  assert _copies(tok, doc) == [(1, 1, 1), (0, 0, 1)]
  doc = documents.Document([_img(False), t("blue"), _img(True), t("one")])
  assert _copies(tok, doc) == [(1, 1, 0), (1, 0, 1)]
  rows, _ = _pack_all([encoding.encode_document(doc, tok, P)] * 3, 128, 64, open_rows=1)
  for row, docs in rows:
    _check_row(row, docs, tok, 128, 64)


def test_oversized_and_empty_docs_dropped_and_counted(tok):
  big = encoding.encode_document(documents.Document([_img(False), _img(True)]), tok, P)
  small = encoding.encode_document(documents.Document([documents.Text("red")]), tok, P)
  empty = encoding.encode_document(documents.Document([documents.Text("")]), tok, P)
  assert encoding.doc_lengths(empty) == (0, 0)
  rows, pk = _pack_all([small, big, empty, small], 64, 16)  # big needs 32 vision slots
  assert pk.stats["dropped_oversize"] == 1 and pk.stats["dropped_empty"] == 1
  assert pk.stats["docs_packed"] == 2 and len(rows) == 1
  assert set(np.unique(rows[0][0]["txt_segment"])) == {0, 1, 2}


def _grain_rows(tok, n_docs=None):
  ds = grain.MapDataset.range(10_000 if n_docs is None else n_docs)
  ds = ds.map(lambda i: encoding.encode_document(world.make_document(0, i, S, WEIGHTS), tok, P))
  ds = packing.PackIterDataset(ds.to_iter_dataset(), l_txt=96, l_vis=64, patch_dim=PD,
                               latent_dim=PD, open_rows=3)
  return iter(ds)


def _assert_rows_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_grain_packer_state_restores_exactly(tok):
  it = _grain_rows(tok)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["rows"]  # restoring has to rebuild open rows, not just rewind
  expected = [next(it) for _ in range(6)]
  fresh = _grain_rows(tok)
  fresh.set_state(state)
  _assert_rows_equal([next(fresh) for _ in range(6)], expected)
  assert fresh.get_state() == it.get_state()


def test_grain_packer_flushes_finite_input(tok):
  rows = list(_grain_rows(tok, n_docs=40))
  assert sum(len(set(np.unique(r["txt_segment"])) - {0}) for r in rows) == 40  # rows may be full


def test_a_run_of_drops_stops_with_the_capacity_keys(tok):
  big = encoding.encode_document(documents.Document([_img(False), _img(True)]), tok, P)
  small = encoding.encode_document(documents.Document([documents.Text("red")]), tok, P)
  empty = encoding.encode_document(documents.Document([documents.Text("")]), tok, P)
  pk = packing.TwoStreamPacker(64, 16, PD, PD, 3, max_drop_run=5)
  for doc in [big, empty, big, big, small]:  # 4 drops, then a packed doc ends the run
    pk.add(doc)
  for doc in [big, empty, big, big]:
    pk.add(doc)
  with pytest.raises(packing.PackingError) as e:
    pk.add(big)  # the 5th drop in a row
  msg = str(e.value)
  assert "dropped 5 documents in a row" in msg and "(4 oversize, 1 empty)" in msg
  assert "needed 22 text + 32 vision slots" in msg  # big: 16 VIT + 6 tokens; 2 x 16 NVAE/CVAE
  assert "data.l_txt = 64 + data.l_vis = 16" in msg
