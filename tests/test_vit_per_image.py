"""The understanding encoder runs over each image's own patches (model/vit.py): an image's
features do not depend on what else its row holds, and rows stay within the image capacity
(batch.vit_capacity) that the encoder's image batch is sized for."""

import jax
import numpy as np
import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import documents
from mogao_jax.data import encoding
from mogao_jax.data import packing
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.batch import Kind
from mogao_jax.data.sources import world
from mogao_jax.model.mogao import Mogao
from tests import modelkit, rowkit
from tests.configs import tiny_config


@pytest.fixture(scope="module", params=["tiny", "siglip"])
def setup(request):
  c = tiny_config()
  c.data.update(dict(l_txt=64, l_vis=16, batch_size=1))
  if request.param == "siglip":
    c.model.update(dict(vit="siglip", vit_mlp_dim=48, vit_pos_grid=3))
  model = Mogao.from_config(c)
  params = modelkit.perturbed_params(c, model)
  feats = jax.jit(lambda p, b: model.apply({"params": p}, b, method=Mogao.image_features))
  return c, params, feats


def _row(c, docs):
  return rowkit.stack([rowkit.build_row(docs, c.data.l_txt, c.data.l_vis, c.model.patch_dim,
                                        c.model.latent_dim)])


def _patches(rng, c, grid):
  return rng.uniform(-1, 1, (grid * grid, c.model.patch_dim)).astype(np.float32)


def test_an_image_reads_only_its_own_patches(setup):
  """Two documents with three images of 4, 9 and 16 patches (vit_grid 4: holes in the grid
  for the smaller two) and text between them: each image's features equal those of the image
  alone in its row; text slots get zeros."""
  c, params, feats = setup
  rng = np.random.default_rng(0)
  imgs = [(1, 2, _patches(rng, c, 2)), (2, 3, _patches(rng, c, 3)), (3, 4, _patches(rng, c, 4))]
  row = _row(c, [[("txt", [5, 6]), ("img", 1, 2, "V", imgs[0][2]), ("txt", [7]),
                  ("img", 2, 3, "VC", imgs[1][2]), ("txt", [8])],
                 [("img", 3, 4, "V", imgs[2][2]), ("txt", [9])]])
  out = np.asarray(feats(params, row))[0]
  assert not out[row["txt_kind"][0] != Kind.VIT].any()
  for image_id, grid, p in imgs:
    alone = _row(c, [[("img", 7, grid, "V", p), ("txt", [5])]])
    want = np.asarray(feats(params, alone))[0][alone["txt_kind"][0] == Kind.VIT]
    got = out[(row["txt_image"][0] == image_id) & (row["txt_kind"][0] == Kind.VIT)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(out).max() > 0.1


def test_capacity_caps_the_images_of_a_row(setup):
  """model.vit_images = 1: the first image (by id) is encoded, the second gets no features;
  the packer never builds such a row (next test)."""
  c, params, _ = setup
  c = c.copy_and_resolve_references()
  c.model.vit_images = 1
  model = Mogao.from_config(c)
  rng = np.random.default_rng(1)
  row = _row(c, [[("img", 2, 2, "V", _patches(rng, c, 2)), ("img", 1, 2, "V", _patches(rng, c, 2)),
                  ("txt", [5])]])
  out = np.asarray(model.apply({"params": params}, row, method=Mogao.image_features))[0]
  assert np.abs(out[row["txt_image"][0] == 1]).sum(axis=-1).min() > 0
  assert not out[row["txt_image"][0] == 2].any()


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(128, world.world_text_corpus(100))


def _doc(n_images):
  img = lambda: documents.Image(np.full((16, 16, 3), 90, np.uint8))  # noqa: E731
  parts = []
  for i in range(n_images):
    parts += [documents.Text(f"a red circle {i}"), img()]
  return documents.Document(parts + [documents.Text("done")])


def test_packer_keeps_rows_within_the_image_capacity(tok):
  encs = [encoding.encode_document(_doc(2), tok, 4) for _ in range(6)]
  assert all(encoding.vit_images(e) == 2 for e in encs)
  pk = packing.TwoStreamPacker(512, 8, 48, 48, open_rows=2, vit_images=3)
  rows = [r for e in encs if (r := pk.add(e)) is not None]
  while pk.rows:
    rows.append(pk.pop_oldest())
  assert len(rows) == 6  # room for 3 documents by slots, 1 by images
  for r in rows:
    assert len(np.unique(r["txt_image"][r["txt_kind"] == Kind.VIT])) <= 3


def test_a_document_with_more_images_is_cut_before_the_extra_image(tok):
  enc = encoding.encode_document(_doc(4), tok, 4, max_len=(512, 8, 2))
  assert encoding.vit_images(enc) == 2
  assert ("doc/truncated", "<document>") in enc["doc"]["issues"]
  assert ("doc/over_vit_images", "<document>: 4 images with VIT copies; a row's encoder holds 2 "
          "(model.vit_images)") in enc["doc"]["issues"]
  whole = encoding.encode_document(_doc(4), tok, 4, max_len=(512, 8))
  assert encoding.vit_images(whole) == 4


def test_default_capacity_holds_every_full_grid_image():
  assert batch_lib.vit_capacity(64, 4) == 4  # 64 text slots hold 4 images of 16 patches
  assert batch_lib.vit_capacity(64, 4, 2) == 2
  assert batch_lib.vit_capacity(8, 4) == 1
