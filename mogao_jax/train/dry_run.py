"""Dry run (``--config.dry_run=True``): compile the train step for the configured mesh and
print per-device memory (XLA's compiled memory analysis), FLOPs per step and the sharding
report, without data, a tokenizer or a single training step.

``--config.dry_run_topology=v5p-256`` compiles for a TPU topology named by JAX instead of the
local devices (ahead-of-time, from a CPU host). That needs JAX's TPU support (libtpu) on the
host; without it the run stops with a message saying so.
"""

from __future__ import annotations

import jax
from absl import logging

from mogao_jax.data import batch as batch_lib
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import report
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao


def _topology_devices(name: str):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(name, "tpu").devices
  except RuntimeError as e:
    raise RuntimeError(
        f"dry_run_topology={name!r}: this JAX cannot compile for a TPU topology here ({e});"
        " install JAX's TPU support (libtpu) on the compiling host, or leave dry_run_topology"
        " empty to compile for the local devices") from e


def abstract_batch(config, sharding) -> dict:
  d, m = config.data, config.model
  spec = batch_lib.row_spec(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim)
  return {k: jax.ShapeDtypeStruct((d.batch_size,) + shape, dtype, sharding=sharding)
          for k, (shape, dtype) in spec.items()}


def compile_step(config, devices=None):
  """(compiled step, parameter report rows, mesh) for the config's mesh over `devices`."""
  mesh = mesh_lib.make_mesh(config, devices=devices)
  rules = rules_lib.make_rules(config, mesh)
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  with rules_lib.activate(mesh, rules):
    bsh = rules_lib.batch_sharding(mesh, rules)
    batch = abstract_batch(config, bsh)
    specs = step_lib.state_logical_specs(config, model, tx, batch)
    shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
    state = jax.eval_shape(lambda k, b: step_lib.init_state(config, model, tx, k, b),
                           jax.random.key(0), batch)
    rows = report.parameter_rows(state.params, specs.params, shardings.params)
    report.check_divisible(rows, mesh)  # a clear error before XLA's
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    step = jax.jit(step_lib.make_train_step(config, model, tx),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, None),
                   donate_argnums=0)
    compiled = step.lower(state, batch).compile()
  return compiled, rows, mesh


def summarize(compiled, rows, mesh) -> dict:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gib = lambda n: n / 2**30  # noqa: E731
  out = {
      "mesh": dict(mesh.shape),
      "params_total": sum(r["bytes"] for r in rows),
      "params_per_device": sum(r["bytes_per_device"] for r in rows),
      "flops_per_step_per_device": float((cost or {}).get("flops", float("nan"))),
  }
  if mem is not None:
    out.update(argument_gib=gib(mem.argument_size_in_bytes), output_gib=gib(mem.output_size_in_bytes),
               temp_gib=gib(mem.temp_size_in_bytes),
               peak_gib=gib(mem.argument_size_in_bytes + mem.temp_size_in_bytes
                            + mem.output_size_in_bytes - mem.alias_size_in_bytes))
  return out


def run(config) -> dict:
  """Compiles, logs the report and the numbers, returns them (no training)."""
  topo = config.get("dry_run_topology", "")
  devices = _topology_devices(topo) if topo else None
  compiled, rows, mesh = compile_step(config, devices)
  logging.info("sharding report:\n%s", report.format_table(rows))
  report.check_replication(rows, mesh.size, config.mesh.get("max_replicated_fraction", 1.0))
  out = summarize(compiled, rows, mesh)
  logging.info("dry run on %s: %s", topo or f"{mesh.size} local devices",
               ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in out.items()))
  return out
