"""TrainState: everything the train step carries from one step to the next (and checkpoints)."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken (skipped ones included: their batch is consumed)
  params: Any  # the model's parameter tree (float32 master weights)
  opt_state: Any  # optax state
  rng: jax.Array  # typed PRNG key (jax.random.key); the step folds in the step number
  ema: Any = None  # EMA of params (train.ema_decay > 0), else None (no leaves)
  nan_run: Any = None  # int32: consecutive steps skipped by the NaN guard (None: no guard state)
  nan_total: Any = None  # int32: all steps skipped by the NaN guard
