"""The timestep conditioning runs once per image copy and is gathered to its slots
(Mogao.conditioning): the same adaLN-single modulation and final modulation as computing it per
slot (float32, within 1e-6 of the largest value), for rows of several documents and images;
rows stay within the image capacity it is sized for (batch.vis_capacity), which the packer
enforces and the encoder cuts documents to. The whole model against a per-slot reference is
tests/test_convert_export.py (the PyTorch export computes it per slot)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import documents, encoding, packing
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.batch import Kind
from mogao_jax.data.sources import world
from mogao_jax.model import image_batch
from mogao_jax.model.mogao import Mogao
from tests import modelkit, rowkit
from tests.configs import tiny_config


@pytest.fixture(scope="module")
def setup():
  c = tiny_config()
  model = Mogao.from_config(c)
  return c, modelkit.perturbed_params(c, model)


def _modulation(m, b, t, n_images):
  cond, copy = m.conditioning(b, t, n_images)
  return m._to_slots(m.t_mod(cond), copy), m._to_slots(m.t_final(cond), copy)


def _row_and_t(c, seed=0):
  rows = rowkit.mixed_rows(c.data.l_txt, c.data.l_vis)  # 4 + 1 images with vision copies
  rows["vis_latent"] = np.zeros(rows["vis_latent"].shape[:2] + (c.model.latent_dim,), np.float32)
  rows["txt_patch"] = np.zeros(rows["txt_patch"].shape[:2] + (c.model.patch_dim,), np.float32)
  nvae = rows["vis_kind"] == Kind.NVAE
  t_img = np.random.default_rng(seed).uniform(0.05, 0.95, (2, 16))
  t = np.where(nvae, np.take_along_axis(t_img, rows["vis_image"], 1), 1.0).astype(np.float32)
  return rows, t


def test_per_image_equals_per_slot(setup):
  c, params = setup
  model = Mogao.from_config(c)
  rows, t = _row_and_t(c)
  n = batch_lib.vis_capacity(c.data.l_vis, c.model.vit_grid, c.model.vis_images)
  assert n == 4
  run = jax.jit(lambda p, b, t, n: model.apply({"params": p}, b, t, n, method=_modulation),
                static_argnums=3)
  per_image, per_slot = run(params, rows, t, n), run(params, rows, t, None)
  for a, r in zip(per_image, per_slot):
    a, r = np.asarray(a), np.asarray(r)
    assert np.abs(r).max() > 0.1 and r.std(axis=1).max() > 1e-3  # slots differ
    np.testing.assert_allclose(a, r, atol=1e-6 * np.abs(r).max())


def test_copy_index():
  """CVAE and NVAE copies of one image are distinct entries; images ranked by id; padding
  (and any image past the capacity) shares the last entry."""
  rows = rowkit.mixed_rows()
  copy = np.asarray(image_batch.copy_index(jnp.asarray(rows["vis_kind"]),
                                           jnp.asarray(rows["vis_image"]),
                                           jnp.asarray(rows["vis_pos"]), 3))
  kind, img = rows["vis_kind"][0], rows["vis_image"][0]
  for i, want_c, want_n in ((1, 0, None), (2, 1, 4), (3, None, 5)):
    assert set(copy[0][(img == i) & (kind == Kind.CVAE)]) == ({want_c} - {None})
    assert set(copy[0][(img == i) & (kind == Kind.NVAE)]) == ({want_n} - {None})
  assert set(copy[0][img == 4]) == {6}  # the fourth image: past the capacity of 3
  assert set(copy[0][kind == Kind.PAD]) == {6}


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(128, world.world_text_corpus(100))


def _story(n_images):
  """A document of n generated images (each gets CVAE + NVAE copies but the last)."""
  parts = []
  for i in range(n_images):
    parts += [documents.Text(f"a red circle {i}"),
              documents.Image(np.full((8, 8, 3), 90, np.uint8), generate=True)]
  return documents.Document(parts)


def test_packer_keeps_rows_within_the_capacity(tok):
  encs = [encoding.encode_document(_story(2), tok, 4) for _ in range(5)]
  assert all(encoding.vision_images(e) == 2 for e in encs)
  pk = packing.TwoStreamPacker(512, 512, 48, 48, open_rows=2, vis_images=3)
  rows = [r for e in encs if (r := pk.add(e)) is not None]
  while pk.rows:
    rows.append(pk.pop_oldest())
  assert len(rows) == 5  # room for all by slots, for one document per row by images
  for r in rows:
    assert len(np.unique(r["vis_image"][r["vis_kind"] != Kind.PAD])) <= 3


def test_a_document_with_more_images_is_cut(tok):
  enc = encoding.encode_document(_story(4), tok, 4, max_len=(512, 512, 8, 2))
  assert encoding.vision_images(enc) == 2
  assert ("doc/over_vis_images", "<document>: 4 images with vision copies; a row holds 2 "
          "(model.vis_images)") in enc["doc"]["issues"]
  assert encoding.vision_images(encoding.encode_document(_story(4), tok, 4)) == 4


def test_capacity():
  assert batch_lib.vis_capacity(64, 4) == 4  # 64 vision slots hold 4 images of 16 patches
  assert batch_lib.vis_capacity(64, 4, 2) == 2
  assert batch_lib.vis_capacity(8, 4) == 1
