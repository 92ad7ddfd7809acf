"""Pure sampling maths: next-token sampling, multi-modal guidance, the Euler flow ODE."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mogao_jax.model import flow


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Sampler settings (hashable: jitted functions take it as a static argument).

  temperature 0 = greedy. top_k 0 / top_p 1 = off. Guidance scales of 1 (the default) mean no
  guidance, right for any run: guidance needs a run trained with condition dropout
  (data.cond_dropout; 0.1 in experiments/tiny_cpu.py), else its unconditional branches are
  out of distribution. On such a run g_txt 3 lifted GenEval 0.008 -> 0.042 at step 400
  (benchmarks/LEARNING.md); a per-run default is open work (issue 34).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  steps: int = 50  # Euler steps from noise (t = 0) to data (t = 1)
  shift: float = 3.0  # time-grid shift (flow.time_grid); 1 = uniform
  g_txt: float = 1.0
  g_img: float = 1.0
  three_pass: bool = False  # run the three guidance branches even at scales 1 (tests)

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {self.top_k}, {self.top_p}")
    if self.steps < 1 or self.shift <= 0:
      raise ValueError(f"need steps >= 1 and shift > 0, got {self.steps}, {self.shift}")

  @property
  def guided(self) -> bool:
    return self.three_pass or not (self.g_txt == 1.0 and self.g_img == 1.0)


def filter_logits(logits_BV, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top-k / the top-p nucleus to -inf (the argmax always survives)."""
  neg = jnp.finfo(logits_BV.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][..., -1:]
    logits_BV = jnp.where(logits_BV < kth, neg, logits_BV)
  if top_p < 1.0:
    order = jnp.argsort(-logits_BV, axis=-1)
    sorted_ = jnp.take_along_axis(logits_BV, order, axis=-1)
    probs = jax.nn.softmax(sorted_, axis=-1)
    # keep a token if the mass strictly before it is < top_p (the smallest such nucleus)
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits_BV.shape[0])[:, None], order].set(keep_sorted)
    logits_BV = jnp.where(keep, logits_BV, neg)
  return logits_BV


def restrict(logits_BV, emittable_V):
  """Logits of ids outside `emittable_V` set to the dtype's minimum (never drawn)."""
  return jnp.where(emittable_V, logits_BV, jnp.finfo(logits_BV.dtype).min)


def sample_tokens(keys_B, logits_BV, sc: SampleConfig, emittable_V=None):
  """One token per row: greedy at temperature 0, else from the filtered softmax; only ids of
  `emittable_V` (see `emittable`) when given."""
  if emittable_V is not None:
    logits_BV = restrict(logits_BV, emittable_V)
  if sc.temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits_BV / sc.temperature, sc.top_k, sc.top_p)
  return jax.vmap(jax.random.categorical)(keys_B, logits).astype(jnp.int32)


def guide(v_none, v_img, v_full, g_img: float, g_txt: float):
  """Multi-modal CFG (MOGAO.md 7): v(none) + g_img (v(img) - v(none)) + g_txt (v(img,txt) - v(img)).

  With g_img = g_txt = g it is ordinary CFG, v(none) + g (v(img,txt) - v(none)); with both 1
  it is the conditional prediction."""
  return v_none + g_img * (v_img - v_none) + g_txt * (v_full - v_img)


def integrate(velocity_fn, x0, steps: int, shift: float = 1.0):
  """Euler ODE dx/dt = velocity_fn(x, t) from t = 0 (noise) to t = 1 on flow.time_grid."""
  ts = flow.time_grid(steps, shift)

  def body(i, x):
    return flow.euler_step(x, velocity_fn(x, ts[i]), ts[i + 1] - ts[i])

  return jax.lax.fori_loop(0, steps, body, x0)
