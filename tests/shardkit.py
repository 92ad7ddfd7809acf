"""Runs the real train step on a mesh for a few fixed global batches; shared by the sharding
tests (one process) and tests/mp_worker.py (several jax.distributed processes)."""

import jax

from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao


def global_batches(config, n, workdir):
  """n global batches of the single-process pipeline (the same whatever the process layout)."""
  from mogao_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.make_pipeline(config, pipeline.make_tokenizer(config, workdir))
  return [next(it) for _ in range(n)]


def run_steps(config, batches, devices=None):
  """Losses and grad norms of len(batches) train steps, plus the final state."""
  mesh = mesh_lib.make_mesh(config, devices=devices)
  rules = rules_lib.make_rules(config, mesh)
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  bsh = rules_lib.batch_sharding(mesh, rules)
  place = lambda b: {k: jax.make_array_from_callback(v.shape, bsh, lambda idx, v=v: v[idx])
                     for k, v in b.items()}
  with rules_lib.activate(mesh, rules):
    first = place(batches[0])
    specs = step_lib.state_logical_specs(config, model, tx, first)
    shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
    shardings, opt_on_device = step_lib.offload_opt_state(config, shardings)  # as the loop
    state = jax.jit(lambda k, b: step_lib.init_state(config, model, tx, k, b),
                    out_shardings=shardings)(jax.random.key(config.seed), first)
    step = jax.jit(step_lib.make_train_step(config, model, tx, opt_on_device),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, None))
    history = []
    for b in batches:
      state, metrics = step(state, place(b))
      history.append({k: float(metrics[k]) for k in ("loss", "text_loss", "flow_loss",
                                                     "grad_norm")})
  return history, state
