"""Dry run (``--config.dry_run=True``): compile the train step for the configured mesh and
print per-device memory (XLA's compiled memory analysis), FLOPs per step and the sharding
report, without data, a tokenizer or a single training step.

``--config.dry_run_topology=v5p-256`` (a slice name) or ``v5p:4x4x8`` (the chip grid, libtpu's
own form) compiles for that TPU topology instead of the local devices, ahead of time from a CPU
host, as MaxText's train_compile does. That needs JAX's TPU support on the host
(``pip install -c constraints.txt -e ".[tpu]"``: libtpu); without it the run stops saying so.
``h100``, ``h100:8``, ``a100:8`` (GPUs of one host, train/gpu_targets.py) compile the step the
same way with the GPU backend (needs the ``.[aot]`` extra: the CUDA plugin and ptxas).
"""

from __future__ import annotations

import importlib.util
import math
import re

import jax
from absl import logging

from mogao_jax.data import batch as batch_lib
from mogao_jax.parallel import estimate
from mogao_jax.parallel import mesh as mesh_lib
from mogao_jax.parallel import report
from mogao_jax.parallel import rules as rules_lib
from mogao_jax.train import gpu_targets
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from mogao_jax.model.mogao import Mogao


# Slice names (Cloud TPU's "v5p-256") count TensorCores on v4 / v5p (2 per chip) and chips on
# v5e / v6e; libtpu wants the chip grid ("v5p:4x4x8"). The grids are the standard slice shapes:
# from the smallest, double the smallest axis (the last of equals), e.g. v5p 2x2x1 -> 2x2x2 ->
# 2x2x4 -> 2x4x4 -> 4x4x4 -> 4x4x8; v5e 1x1 -> 1x2 -> 2x2 -> 2x4 -> 4x4.
_SLICES = {"v4": ("v4", 2, (2, 2, 1)), "v5p": ("v5p", 2, (2, 2, 1)),
           "v5e": ("v5e", 1, (1, 1)), "v5litepod": ("v5e", 1, (1, 1)), "v6e": ("v6e", 1, (1, 1))}


def topology_name(name: str) -> str:
  """libtpu's topology name ("v5p:4x4x8") for a slice name ("v5p-256") or a grid name."""
  if re.fullmatch(r"[A-Za-z0-9_ ]+[:=_][0-9x]+(_twisted|_untwisted)?", name):
    return name
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
  bad = (f"dry_run_topology = {name!r}: expected a slice name such as 'v5p-256' / 'v5e-16' or a"
         " chip grid such as 'v5p:4x4x8' (or a GPU target such as 'h100:8')")
  if not m:
    raise ValueError(bad)
  gen, per_chip, grid = _SLICES[m.group(1)]
  n = int(m.group(2))
  chips = n // per_chip
  if n % per_chip or chips < math.prod(grid) or chips & (chips - 1):
    raise ValueError(f"{bad} ({n} is not a slice size of {m.group(1)})")
  grid = list(grid)
  while math.prod(grid) < chips:
    i = max(j for j, g in enumerate(grid) if g == min(grid))
    grid[i] *= 2
  return f"{gen}:{'x'.join(map(str, grid))}"


def has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def _topology_devices(name: str):
  if gpu_targets.parse(name):
    return gpu_targets.devices(name)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  grid = topology_name(name)
  if not has_libtpu():
    raise RuntimeError(
        f"dry_run_topology={name!r}: JAX's TPU support (libtpu) is not installed on this host;"
        " install it with pip install -c constraints.txt -e \".[tpu]\" (or leave"
        " dry_run_topology empty to compile for the local devices)")
  try:
    return topologies.get_topology_desc(grid, "tpu").devices
  except RuntimeError as e:
    hint = (" (another process holds libtpu: wait for it, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1)"
            if "lockfile" in str(e) else "")
    raise RuntimeError(f"dry_run_topology={name!r} (libtpu's name {grid!r}): libtpu refused"
                       f" it: {e}{hint}") from e


# HBM per device (one JAX device per chip) by device_kind, from the data sheets, for a topology
# compiled ahead of time (its devices report no memory_stats). First match wins.
_HBM_GIB = (("TPU v5 lite", 16), ("TPU v5", 95), ("TPU v6 lite", 32), ("TPU v4", 32),
            ("H200", 141), ("H100", 80), ("A100", 80))


def hbm_gib(device) -> float | None:
  """The device's memory in GiB: its memory_stats where it reports them, else the data sheet;
  None where neither knows (e.g. a CPU device)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001  (topology devices raise; CPU devices may return None)
    stats = {}
  if stats.get("bytes_limit"):
    return stats["bytes_limit"] / 2**30
  return next((g for name, g in _HBM_GIB if name in device.device_kind), None)


def device_memory_gib(config, device) -> float | None:
  """mesh.device_memory_gib when > 0; None when -1 (no check); else the device's own."""
  key = float(config.mesh.get("device_memory_gib", 0.0) or 0.0)
  if key < 0:
    return None
  return key if key > 0 else hbm_gib(device)


def check_memory(config, devices) -> dict | None:
  """The start-up memory check (parallel/estimate.py check_fits) for `devices`; the estimate,
  or None where the device memory is unknown (CPU) or the check is off."""
  return estimate.check_fits(config, len(devices), device_memory_gib(config, devices[0]))


def abstract_batch(config, sharding) -> dict:
  d, m = config.data, config.model
  spec = batch_lib.row_spec(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim)
  return {k: jax.ShapeDtypeStruct((d.batch_size,) + shape, dtype, sharding=sharding)
          for k, (shape, dtype) in spec.items()}


def compile_step(config, devices=None, compiler_options=None):
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
                           step_lib.abstract_key(), batch)
    rows = report.parameter_rows(state.params, specs.params, shardings.params)
    report.check_divisible(rows, mesh)  # a clear error before XLA's
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    step = jax.jit(step_lib.make_train_step(config, model, tx),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, None),
                   donate_argnums=0)
    compiled = step.lower(state, batch).compile(compiler_options)
  return compiled, rows, mesh


def _positive_or_nan(x) -> float:
  return float(x) if x is not None and float(x) > 0 else float("nan")


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
      # XLA's roofline of the compiled program, a compiler estimate, never a measurement (it
      # counts a scanned stack's body once); nan where not reported: libtpu 0.0.42.1 gives a
      # negative sentinel for some programs (-2 for v5p-8's tiny step; RESULTS.md 15, 17).
      "optimal_seconds": _positive_or_nan((cost or {}).get("optimal_seconds")),
  }
  if mem is not None:
    out.update(argument_gib=gib(mem.argument_size_in_bytes), output_gib=gib(mem.output_size_in_bytes),
               temp_gib=gib(mem.temp_size_in_bytes),
               peak_gib=gib(mem.argument_size_in_bytes + mem.temp_size_in_bytes
                            + mem.output_size_in_bytes - mem.alias_size_in_bytes))
    hbm = hbm_gib(mesh.devices.flat[0])
    if hbm is not None:
      out.update(hbm_gib=float(hbm), peak_of_hbm=out["peak_gib"] / hbm)
  return out


def run(config) -> dict:
  """Compiles, logs the report and the numbers, returns them (no training)."""
  topo = config.get("dry_run_topology", "")
  devices = _topology_devices(topo) if topo else None
  try:  # the trainer stops here; the dry run goes on to XLA's own numbers
    est = check_memory(config, devices or jax.devices())
    est = est and est["gib"]["total"]
  except estimate.MemoryFitError as e:
    logging.warning("dry run: %s", e)
    est = None
  options = gpu_targets.COMPILER_OPTIONS if topo and gpu_targets.parse(topo) else None
  compiled, rows, mesh = compile_step(config, devices, options)
  logging.info("sharding report:\n%s", report.format_table(rows))
  report.check_replication(rows, mesh.size, config.mesh.get("max_replicated_fraction", 1.0))
  out = summarize(compiled, rows, mesh)
  if est is not None:
    out["estimate_gib"] = est
  logging.info("dry run on %s: %s", topo or f"{mesh.size} local devices",
               ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in out.items()))
  hbm = device_memory_gib(config, mesh.devices.flat[0])
  if hbm and "peak_gib" in out:
    out.update(hbm_gib=float(hbm), peak_of_hbm=out["peak_gib"] / hbm)
  if out.get("peak_of_hbm", 0) > 1:
    logging.warning("dry run: the step needs %.1f GiB per device but the device has %.1f GiB:"
                    " it will not fit (shard more, remat, or fewer rows per microbatch)",
                    out["peak_gib"], out["hbm_gib"])
  return out
