"""TrainState: everything the train step carries from one step to the next."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any  # the model's parameter tree (float32 master weights)
  opt_state: Any  # optax state
  rng: jax.Array  # typed PRNG key (jax.random.key); the step splits it each step
