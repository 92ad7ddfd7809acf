"""A tiny model with every parameter nonzero, for tests that compare model outputs."""

import jax
import optax

from mogao_jax.train import step
from mogao_jax.data import batch as batch_lib


def fresh_params(config, model):
  """The model's init params (seed 0), zero-initialised heads and AdaLN terms included."""
  return step.init_state(config, model, optax.sgd(0.0), jax.random.key(0),
                         batch_lib.example_batch(config, 1)).params


def perturbed_params(config, model, seed: int = 1, scale: float = 0.05):
  """Init params plus Gaussian noise: a fresh init leaves zero-initialised heads and AdaLN
  terms at 0, which would make checks of what they affect vacuous."""
  leaves, tree = jax.tree_util.tree_flatten(fresh_params(config, model))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([x + scale * jax.random.normal(k, x.shape)
                         for x, k in zip(leaves, keys)])
