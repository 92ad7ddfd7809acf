"""Params-only restore from another run's checkpoint, for fine-tuning from another config.

``init.params_from = /path/to/workdir`` (or its ``checkpoints`` dir, or one step dir): on a
FRESH run (no checkpoint in the own workdir), the parameters whose name and shape match are read
from that run's newest complete checkpoint (``init.params_key``: ``params`` or ``ema``); the
rest keep their fresh init. Optimizer state, step, RNG and data position start fresh. The report
(matched / missing / unexpected / mis-shaped) goes to the log and ``<workdir>/params_from.txt``.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

from mogao_jax.train import restore


def _nest(flat: dict[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for keys, v in flat.items():
    d = out
    for k in keys[:-1]:
      d = d.setdefault(k, {})
    d[keys[-1]] = v
  return out


def _keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def load_params(source: str, params: Any, key: str = "params") -> tuple[Any, dict[str, list]]:
  """``params`` (a tree of placed arrays) with every same-named, same-shaped leaf replaced by the
  checkpoint's; returns (params, report) with report keys matched / missing / unexpected /
  misshaped."""
  if key not in ("params", "ema"):
    raise ValueError(f"init.params_key = {key!r}: must be 'params' or 'ema'")
  directory, step = restore.locate(source, "init.params_from")
  saved_tree = restore.saved_state_tree(directory, step).get(key)
  if saved_tree is None:
    raise ValueError(f"init.params_from: {directory} step {step} holds no '{key}'"
                     " (init.params_key)")
  saved = {_keys(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  current = {_keys(p): x for p, x in leaves}
  report = {"matched": [], "missing": [], "unexpected": [], "misshaped": []}
  wanted = {}
  for k, x in current.items():
    if k not in saved:
      report["missing"].append(".".join(k))
    elif saved[k] != tuple(x.shape):
      report["misshaped"].append(f"{'.'.join(k)}: {saved[k]} in the checkpoint, {x.shape} here")
    else:
      report["matched"].append(".".join(k))
      wanted[k] = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  report["unexpected"] = [".".join(k) for k in sorted(set(saved) - set(current))]
  if not wanted:
    raise ValueError(f"init.params_from: no parameter of {directory} step {step} matches this"
                     f" model by name and shape ({len(report['misshaped'])} mis-shaped,"
                     f" {len(report['unexpected'])} unexpected)")
  restored, _, _ = restore.restore_params(directory, step=step, which=key, like=_nest(wanted),
                                          what="init.params_from")
  got = {_keys(p): x for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  new = [got.get(_keys(p), x) for p, x in leaves]
  report["source"] = [f"{directory} step {step} ({key})"]
  return jax.tree_util.tree_unflatten(treedef, new), report


def format_report(report: dict[str, list]) -> str:
  lines = [f"params from {report['source'][0]}:"]
  for k in ("matched", "missing", "unexpected", "misshaped"):
    lines.append(f"  {k}: {len(report[k])}")
    lines += [f"    {name}" for name in report[k]] if k != "matched" else []
  return "\n".join(lines)


def apply_to_state(config, state, workdir: str):
  """The fresh TrainState with ``init.params_from`` loaded into params (and EMA)."""
  init = config.get("init", None)
  source = (init.get("params_from", "") if init is not None else "") or ""
  if not source:
    return state
  params, report = load_params(source, state.params, init.get("params_key", "params"))
  text = format_report(report)
  logging.info("%s", text)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "params_from.txt"), "w") as f:
      f.write(text + "\n")
  # The EMA starts from the loaded weights (a copy: the step donates both buffers).
  ema = None if state.ema is None else jax.tree.map(lambda p: p.copy(), params)
  return state.replace(params=params, ema=ema)
