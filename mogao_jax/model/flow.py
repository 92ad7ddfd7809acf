"""Flow matching (rectified flow), shared by the train step and the sampler.

Convention (MOGAO.md section 6): x_t = t * x1 + (1 - t) * x0 with x1 the clean latent, x0
Gaussian noise, t = 0 pure noise and t = 1 data; the target velocity is v = x1 - x0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
