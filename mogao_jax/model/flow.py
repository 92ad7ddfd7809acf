"""Flow matching (rectified flow), shared by the train step, the sampler and the diagnostics.

Convention (MOGAO.md section 6): x_t = t * x1 + (1 - t) * x0 with x1 the clean latent, x0
Gaussian noise, t = 0 pure noise and t = 1 data; the target velocity is v = x1 - x0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mogao_jax.data import batch as batch_lib
from mogao_jax.data.batch import Kind


def shift_time(t, shift: float):
  """Resolution shift towards noise, as SD3 / BAGEL.

  SD3 and BAGEL measure the noise level sigma (1 = noise) and use
  sigma' = s sigma / (1 + (s - 1) sigma). Our t runs the other way (sigma = 1 - t), so we shift
  sigma and map back: with s > 1 more samples land near the noise end, as those papers intend.
  """
  sigma = 1.0 - t
  sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
  return 1.0 - sigma


def sample_t(rng, shape, logit_mean: float, logit_std: float, shift: float):
  """Logit-normal t, then the resolution shift."""
  t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, shape, jnp.float32))
  return shift_time(t, shift)


def interpolate(x1, x0, t):
  """x_t on the straight path from noise x0 (t = 0) to data x1 (t = 1)."""
  return t * x1 + (1.0 - t) * x0


def velocity_target(x1, x0):
  return x1 - x0


def euler_step(x_t, v, dt):
  """One Euler step of the ODE dx/dt = v, from t to t + dt."""
  return x_t + dt * v


def time_grid(steps: int, shift: float):
  """steps+1 times from 0 (noise) to 1 (data), uniformly spaced then shifted like training."""
  return shift_time(jnp.linspace(0.0, 1.0, steps + 1), shift)


def draw_noise(rng, batch, flow_cfg):
  """One t per (row, image id) and Gaussian noise per vision slot (config section ``flow``)."""
  b, l_vis, c = batch["vis_latent"].shape
  n_ids = batch["txt_kind"].shape[1] + l_vis + 1  # a row holds fewer images than slots
  t_rng, n_rng = jax.random.split(rng)
  t_BN = sample_t(t_rng, (b, n_ids), flow_cfg.logit_mean, flow_cfg.logit_std, flow_cfg.shift)
  return t_BN, jax.random.normal(n_rng, (b, l_vis, c), jnp.float32)


def apply_noise(batch, t_BN, noise_BVC):
  """Model inputs with NVAE slots noised to x_t, each slot's t (1 on clean slots), target v."""
  is_nvae = batch["vis_kind"] == Kind.NVAE
  t_BV = jnp.where(is_nvae, jnp.take_along_axis(t_BN, batch["vis_image"], axis=1), 1.0)
  x1 = batch["vis_latent"]
  x_t = jnp.where(is_nvae[..., None], interpolate(x1, noise_BVC, t_BV[..., None]), x1)
  inputs = {**batch_lib.model_inputs(batch), "vis_latent": x_t}
  return inputs, t_BV, velocity_target(x1, noise_BVC)
