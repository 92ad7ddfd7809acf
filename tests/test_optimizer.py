"""Schedule shape, weight-decay mask and config validation of mogao_jax.train.optimizer."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mogao_jax.train import optimizer


def test_schedule_points(config):
  config.optim.update(dict(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1))
  config.train.steps = 100
  _, sched = optimizer.make_optimizer(config)
  np.testing.assert_allclose(sched(0), 0.0)
  np.testing.assert_allclose(sched(5), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(sched(55), 1e-4 + 0.5 * 9e-4, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(sched(100), 1e-4, rtol=1e-6)


def test_decay_mask():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
            "norm": {"scale": jnp.ones((4,))},
            "scan": {"bias": jnp.ones((2, 4)), "kernel": jnp.ones((2, 3, 4))}}
  mask = optimizer.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "scan": {"bias": False, "kernel": True}}


def test_decay_hits_only_matrices(config):
  config.optim.update(dict(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=1.0))
  tx, _ = optimizer.make_optimizer(config)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["bias"], 1.0)  # zero grad, no decay: unchanged
  assert float(new["kernel"][0, 0]) < 1.0  # decayed


def test_warmup_longer_than_the_run_names_both_keys(config):
  # Each key's own range is config_schema's (tests/test_config_schema.py); this rule is between
  # two keys, so it lives with the optimizer.
  config.optim.warmup_steps = config.train.steps
  with pytest.raises(ValueError, match=r"optim\.warmup_steps = .*train\.steps"):
    optimizer.make_optimizer(config)
