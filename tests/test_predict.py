"""model.predict: what the vision head predicts (velocity, or the clean latent x1 turned into
a velocity inside the model), so that the loss and the sampler never need to know."""

import numpy as np
import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind
from mogao_jax.model.config import ModelConfig
from mogao_jax.model.mogao import Mogao
from tests import modelkit, rowkit


def _apply(config, params, t):
  """Velocities for a row with a context image (CVAE, t = 1) and a generated one (NVAE, t)."""
  c, rng = config, np.random.default_rng(0)
  px = lambda: rng.uniform(-1, 1, (4, c.model.patch_dim)).astype(np.float32)  # noqa: E731
  doc = [("txt", [5, 6, 7]), ("img", 1, 2, "VC", px()), ("txt", [8, 9]),
         ("img", 2, 2, "N", px())]
  b = rowkit.stack([rowkit.build_row([doc], c.data.l_txt, c.data.l_vis, c.model.patch_dim,
                                     c.model.latent_dim)])
  nvae = b["vis_kind"] == Kind.NVAE
  b["vis_latent"] = np.where(nvae[..., None], rng.normal(size=b["vis_latent"].shape),
                             b["vis_latent"]).astype(np.float32)
  t_BV = np.where(nvae, t, 1.0).astype(np.float32)
  _, v = Mogao.from_config(c).apply({"params": params}, batch_lib.model_inputs(b), t_BV)
  return b["vis_latent"], np.asarray(v), nvae


@pytest.mark.parametrize("t", [0.1, 0.7])
def test_fresh_x1_model_estimates_zero_velocity_model_keeps_its_input(config, t):
  # The vision head starts at zero. Predicting velocity, the one-step clean estimate
  # x_t + (1 - t) v is then x_t itself; predicting x1, it is 0 (the head's output) for any t.
  config.model.predict = "velocity"
  x_t, v, nvae = _apply(config, modelkit.fresh_params(config, Mogao.from_config(config)), t)
  np.testing.assert_allclose(v[nvae], 0.0, atol=1e-6)
  config.model.predict = "x1"
  x_t, v, nvae = _apply(config, modelkit.fresh_params(config, Mogao.from_config(config)), t)
  x1_hat = x_t + (1.0 - t) * v
  np.testing.assert_allclose(x1_hat[nvae], 0.0, atol=1e-5)
  assert np.abs(x_t[nvae]).mean() > 0.5  # so the check above is not about an all-zero input


def test_x1_velocity_is_finite_on_clean_slots(config):
  # CVAE slots carry t = 1, where (x1 - x_t) / (1 - t) would divide by zero: 1 - t is clamped.
  config.model.predict = "x1"
  params = modelkit.perturbed_params(config, Mogao.from_config(config))
  _, v, _ = _apply(config, params, 1.0)
  assert np.isfinite(v).all() and np.abs(v).max() > 0


def test_predict_is_validated(config):
  config.model.predict = "epsilon"
  with pytest.raises(ValueError, match="model.predict"):
    ModelConfig.from_config(config.model)
