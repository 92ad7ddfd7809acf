"""Model properties that make ECTF correct: equivalence to the naive scheme, independence of
slot layout, and separation of the two pathways."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.data.batch import Kind
from mogao_jax.train import step
from mogao_jax.model.mogao import Mogao
from tests import modelkit, rowkit
from tests.configs import tiny_config

GRID = 2


@pytest.fixture(scope="module")
def setup():
  c = tiny_config()
  model = Mogao.from_config(c)
  params = modelkit.perturbed_params(c, model)
  losses = jax.jit(functools.partial(step.per_slot_losses, model))
  apply = jax.jit(lambda p, inputs, t: model.apply({"params": p}, inputs, t))
  return c, model, params, losses, apply


def _doc(rng, c, gen_copies="VCN"):
  px = lambda: rng.uniform(-1, 1, (GRID * GRID, c.model.patch_dim)).astype(np.float32)
  tok = lambda n: list(rng.integers(3, c.model.vocab_size, n))
  ctx0, img1, img2 = px(), px(), px()
  full = [("txt", tok(3)), ("img", 1, GRID, "VC", ctx0), ("txt", tok(2)),
          ("img", 2, GRID, gen_copies, img1), ("txt", tok(2)), ("img", 3, GRID, "N", img2)]
  return full


def _row(c, docs):
  return rowkit.stack([rowkit.build_row(docs, c.data.l_txt, c.data.l_vis, c.model.patch_dim,
                                        c.model.latent_dim)])


def _noise_for(row, noise_by_image):
  """Places each image's per-patch noise on that image's NVAE slots, wherever they are."""
  out = np.zeros(row["vis_latent"].shape, np.float32)
  for img, noise in noise_by_image.items():
    slots = np.nonzero((row["vis_kind"][0] == Kind.NVAE) & (row["vis_image"][0] == img))[0]
    out[0, slots] = noise[:len(slots)]
  return out


def _image_loss(row, se_BV, img):
  sel = (row["vis_kind"][0] == Kind.NVAE) & (row["vis_image"][0] == img)
  return float(np.asarray(se_BV)[0][sel].mean())


def test_ectf_equals_naive_per_image_passes(setup):
  c, _, params, losses, _ = setup
  rng = np.random.default_rng(0)
  full = _doc(rng, c)
  n_ids = c.data.l_txt + c.data.l_vis + 1
  t_BN = jnp.asarray(rng.uniform(0.05, 0.95, (1, n_ids)), jnp.float32)
  noise = {i: rng.normal(size=(GRID * GRID, c.model.latent_dim)).astype(np.float32)
           for i in (2, 3)}

  ectf = _row(c, [full])
  ce_ectf, se_ectf = losses(params, ectf, t_BN, _noise_for(ectf, noise))

  # Naive scheme: one pass per generated image, with its clean history and only its own noise.
  naive_img2 = _row(c, [full[:3] + [("img", 2, GRID, "N", full[3][4])]])
  naive_img3 = _row(c, [full[:3] + [("img", 2, GRID, "VC", full[3][4])] + full[4:]])
  clean_text = _row(c, [full[:3] + [("img", 2, GRID, "VC", full[3][4])] + full[4:5]])
  for img, naive in ((2, naive_img2), (3, naive_img3)):
    _, se = losses(params, naive, t_BN, _noise_for(naive, noise))
    np.testing.assert_allclose(_image_loss(ectf, se_ectf, img), _image_loss(naive, se, img),
                               rtol=1e-5, atol=1e-6)  # float32, same ops in another order
  ce_clean, _ = losses(params, clean_text, t_BN, _noise_for(clean_text, {}))
  w = clean_text["txt_loss_w"][0] > 0
  np.testing.assert_array_equal(w, ectf["txt_loss_w"][0] > 0)
  np.testing.assert_allclose(np.asarray(ce_ectf)[0][w], np.asarray(ce_clean)[0][w],
                             rtol=1e-5, atol=1e-6)
  # and the check can fail: noising image 2 in place (Transfusion) changes image 3's loss.
  in_place = _row(c, [full[:3] + [("img", 2, GRID, "N", full[3][4])] + full[4:]])
  _, se = losses(params, in_place, t_BN, _noise_for(in_place, noise))
  assert abs(_image_loss(in_place, se, 3) - _image_loss(ectf, se_ectf, 3)) > 1e-4


def test_permuting_slots_permutes_outputs(setup):
  c, _, params, losses, apply = setup
  rng = np.random.default_rng(1)
  row = _row(c, [_doc(rng, c), [("txt", [5, 6, 7])]])
  n_ids = c.data.l_txt + c.data.l_vis + 1
  t_BN = jnp.asarray(rng.uniform(0.05, 0.95, (1, n_ids)), jnp.float32)
  noise = rng.normal(size=row["vis_latent"].shape).astype(np.float32)
  pt, pv = rng.permutation(c.data.l_txt), rng.permutation(c.data.l_vis)
  perm = {k: (v[:, pt] if k.startswith("txt") else v[:, pv]) for k, v in row.items()}

  ce, se = losses(params, row, t_BN, noise)
  ce_p, se_p = losses(params, perm, t_BN, noise[:, pv])
  np.testing.assert_allclose(np.asarray(ce)[:, pt], ce_p, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(se)[:, pv], se_p, rtol=1e-5, atol=1e-5)
  total = lambda x, w: float((np.asarray(x) * w).sum() / w.sum())
  assert total(ce, row["txt_loss_w"]) == pytest.approx(total(ce_p, perm["txt_loss_w"]), rel=1e-6)
  assert total(se, row["vis_loss_w"]) == pytest.approx(total(se_p, perm["vis_loss_w"]), rel=1e-6)


def _is_vision_param(path):
  names = [getattr(p, "key", "") for p in path]
  return "vis" in names or any(n.startswith(("vis_", "t_")) for n in names) or \
      "adaln_table" in names


def test_vision_weights_never_touch_text_logits(setup):
  c, _, params, _, apply = setup
  rng = np.random.default_rng(2)
  row = _row(c, [_doc(rng, c), [("txt", [5, 6, 7, 8])]])
  t_BV = jnp.asarray(rng.uniform(0, 1, row["vis_kind"].shape), jnp.float32)
  bumped = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if _is_vision_param(p) else x, params)
  logits, vel = apply(params, row, t_BV)
  logits_b, vel_b = apply(bumped, row, t_BV)
  real = row["txt_segment"][0] > 0  # padding queries attend uniformly to everything
  np.testing.assert_array_equal(np.asarray(logits)[0, real], np.asarray(logits_b)[0, real])
  assert np.abs(np.asarray(vel) - np.asarray(vel_b)).max() > 1e-3  # the bump did something
