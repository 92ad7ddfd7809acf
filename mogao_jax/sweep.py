"""``python -m mogao_jax.sweep experiments/X.py[:arg] --workdir ROOT [--dry_run] [--parallel N]
[--emit_commands] [--set key=value ...]``

An experiment file may define ``get_sweep()``: a list of override dicts with dotted config keys
(``{"optim.lr": 1e-3, "model.depth": 2}``); ``product(...)`` and ``zipped(...)`` below build
grids and lists. The special key ``"arg"`` merges into the config argument of the path
(``{"arg": "size=small"}``), for sweeps over presets. Every run's overrides are checked against
the config in this process first: a key that is not in the config, or a value of the wrong type,
fails naming the key before anything runs. Each run gets ``ROOT/<name>``, the name built from
its overrides (sanitised; on a clash a hash of the overrides is appended), and
``ROOT/<name>/overrides.json``; ``ROOT/sweep.json`` lists the sweep.

Modes: ``--dry_run`` lists the runs and commands; ``--emit_commands`` writes them to
``ROOT/commands.sh`` (prefixed by ``--launcher``, e.g. a cluster submit script); otherwise the
runs train here, ``--parallel`` at a time, each logging to ``ROOT/<name>/train.log``.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags

from mogao_jax import config_args
from mogao_jax import trees

ARG_KEY = "arg"  # not a config key: merges into the config path's argument
_NAME_OK = re.compile(r"[^A-Za-z0-9._=+-]+")
_MAX_NAME = 96


# --- building sweeps (for experiment files) --------------------------------------------------

def product(**axes: Sequence[Any]) -> list[dict[str, Any]]:
  """The grid: ``product(**{"optim.lr": [1e-3, 3e-3], "model.depth": [2, 4]})`` = 4 runs."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zipped(**axes: Sequence[Any]) -> list[dict[str, Any]]:
  """Runs side by side: ``zipped(**{"optim.lr": [1, 2], "optim.b2": [.9, .95]})`` = 2 runs."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped sweep axes differ in length: {lengths}")
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


# --- loading and checking ----------------------------------------------------------------------

def merge_arg(base: str | None, extra: str | None) -> str:
  """``base`` config argument with the ``key=value`` pairs of ``extra`` replacing its own."""
  items = config_args.split_arg(base)
  items.update(config_args.split_arg(extra))
  return config_args.join_arg(items)


def apply_overrides(config, overrides: dict[str, Any], where: str = "") -> None:
  """Sets dotted keys in ``config`` (in place); unknown key or wrong type -> ValueError."""
  for key, value in overrides.items():
    if key == ARG_KEY:
      continue
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        near = difflib.get_close_matches(key, list(trees.flatten(config.to_dict())), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"{where}sweep key {key!r} is not in the config:"
                         f" no {'.'.join(parts[:i + 1])!r}{hint}")
      if i < len(parts) - 1:
        node = node[part]
    if hasattr(node[parts[-1]], "keys"):
      raise ValueError(f"{where}sweep key {key!r} is a config section, not a value")
    try:
      node[parts[-1]] = tuple(value) if isinstance(value, list) else value
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}sweep key {key!r} = {value!r}: {e}") from None


def flag_value(value: Any) -> str:
  """A Python value as ml_collections' ``--config.key=`` flag parses it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if value is None:
    raise ValueError("None cannot be passed as a --config override")
  return str(value)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
  """``--set key=value`` strings -> overrides (values parsed as Python literals if they are)."""
  import ast  # pylint: disable=g-import-not-at-top
  out = {}
  for item in items:
    key, eq, raw = item.partition("=")
    if not eq:
      raise ValueError(f"--set {item!r}: expected key=value")
    if raw.lower() in ("true", "false"):
      out[key] = raw.lower() == "true"
      continue
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw  # a bare string
  return out


# --- runs -----------------------------------------------------------------------------------

def _value_name(value: Any) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "x".join(_value_name(v) for v in value)
  return str(value)


def run_name(overrides: dict[str, Any], short: dict[str, str]) -> str:
  parts = []
  for key, value in overrides.items():
    if key == ARG_KEY:
      parts.append(str(value).replace(",", "_"))
    else:
      parts.append(f"{short[key]}={_value_name(value)}")
  name = _NAME_OK.sub("-", "_".join(parts)).strip("-_.") or "base"
  return name if len(name) <= _MAX_NAME else name[:_MAX_NAME - 9] + "-" + _digest(overrides)


def _digest(overrides: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(overrides, sort_keys=True, default=repr).encode()
                        ).hexdigest()[:8]


def _short_keys(runs: list[dict[str, Any]]) -> dict[str, str]:
  """Dotted key -> its last part, or the whole key where two keys share a last part."""
  keys = list(dict.fromkeys(k for r in runs for k in r))
  last = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def run_names(runs: list[dict[str, Any]]) -> list[str]:
  """Unique, filesystem-safe workdir names; clashing names get a hash of their overrides."""
  short = _short_keys(runs)
  names = [run_name(r, short) for r in runs]
  for name in set(names):
    clash = [i for i, n in enumerate(names) if n == name]
    if len(clash) > 1:
      for i in clash:
        names[i] = f"{name}-{_digest(runs[i])}"
  seen: dict[str, int] = {}
  for i, name in enumerate(names):
    if name in seen:
      raise ValueError(f"sweep runs {seen[name]} and {i} have the same overrides: {runs[i]}")
    seen[name] = i
  return names


def plan(experiment: str, root: str, common: dict[str, Any] | None = None,
         launcher: Sequence[str] = ("python", "-m", "mogao_jax.train")) -> list[dict[str, Any]]:
  """The checked runs of ``experiment`` (``path[:arg]``): name, overrides, workdir, command."""
  path, _, base_arg = experiment.partition(":")
  module = config_args.load_experiment(path)
  runs = [dict(r) for r in (module.get_sweep() if hasattr(module, "get_sweep") else [{}])]
  if not runs or not all(isinstance(r, dict) for r in runs):
    raise ValueError(f"{path}: get_sweep() must return a non-empty list of dicts")
  out = []
  for i, (name, over) in enumerate(zip(run_names(runs), runs)):
    arg = merge_arg(base_arg, over.get(ARG_KEY))
    config = module.get_config(arg) if arg else module.get_config()
    full = {**over, **(common or {})}
    apply_overrides(config, full, where=f"run {i} ({name}): ")
    workdir = os.path.join(root, name)
    cmd = [*launcher, "--config", f"{path}:{arg}" if arg else path, "--workdir", workdir]
    cmd += [f"--config.{k}={flag_value(v)}" for k, v in full.items() if k != ARG_KEY]
    out.append({"name": name, "overrides": over, "set": dict(common or {}), "workdir": workdir,
                "command": cmd})
  return out


def _write_plan(root: str, experiment: str, runs: list[dict[str, Any]]) -> None:
  os.makedirs(root, exist_ok=True)
  for r in runs:
    os.makedirs(r["workdir"], exist_ok=True)
    with open(os.path.join(r["workdir"], "overrides.json"), "w") as f:
      json.dump(r["overrides"], f, indent=2, default=repr)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({"experiment": experiment, "runs": runs}, f, indent=2, default=repr)


def run_all(commands: list[list[str]], logs: list[str], parallel: int = 1,
            poll_s: float = 0.5) -> list[int]:
  """Runs the commands ``parallel`` at a time (stdout + stderr -> its log); exit codes."""
  todo, running, codes = list(range(len(commands))), {}, [None] * len(commands)
  t0 = {}
  while todo or running:
    while todo and len(running) < max(1, parallel):
      i = todo.pop(0)
      with open(logs[i], "ab") as log:
        running[i] = subprocess.Popen(commands[i], stdout=log, stderr=subprocess.STDOUT)
      t0[i] = time.time()
      print(f"[{i + 1}/{len(commands)}] started  -> {logs[i]}", flush=True)
    for i, proc in list(running.items()):
      if proc.poll() is not None:
        codes[i] = proc.returncode
        del running[i]
        print(f"[{i + 1}/{len(commands)}] {'done' if codes[i] == 0 else 'FAILED'}"
              f" (exit {codes[i]}, {time.time() - t0[i]:.0f}s)", flush=True)
    time.sleep(poll_s)
  return codes


# --- the command --------------------------------------------------------------------------------

def _define_flags() -> None:
  """Only when run as the command: experiment files import this module inside the trainer,
  whose own --workdir flag would clash."""
  flags.DEFINE_string("workdir", None, "sweep root: one workdir per run below it")
  flags.DEFINE_bool("dry_run", False, "list the runs and their commands; write nothing")
  flags.DEFINE_integer("parallel", 1, "runs training at once (local mode)")
  flags.DEFINE_bool("emit_commands", False, "write ROOT/commands.sh instead of running")
  flags.DEFINE_string("launcher", None, "command prefix of each run (default: this python -m"
                      " mogao_jax.train; with --emit_commands: python -m mogao_jax.train),"
                      " e.g. 'sbatch launch/train.sbatch'")
  flags.DEFINE_multi_string("set", [], "key=value override for every run")


def main(argv):
  f = flags.FLAGS
  if len(argv) != 2:
    raise app.UsageError("usage: python -m mogao_jax.sweep experiments/X.py[:arg] --workdir ROOT")
  if not f.workdir:
    raise app.UsageError("--workdir ROOT is required")
  default = ["python" if f.emit_commands else sys.executable, "-m", "mogao_jax.train"]
  launcher = shlex.split(f.launcher) if f.launcher else default
  try:
    runs = plan(argv[1], f.workdir, parse_set(f.set), launcher)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"sweep: {e}")
  for r in runs:
    print(f"{r['name']}\t{json.dumps(r['overrides'], default=repr)}")
    if f.dry_run or f.emit_commands:
      print(f"  {shlex.join(r['command'])}")
  if f.dry_run:
    return
  _write_plan(f.workdir, argv[1], runs)
  if f.emit_commands:
    path = os.path.join(f.workdir, "commands.sh")
    with open(path, "w") as f:
      f.write("".join(shlex.join(r["command"]) + "\n" for r in runs))
    print(f"wrote {len(runs)} commands to {path}")
    return
  codes = run_all([r["command"] for r in runs],
                  [os.path.join(r["workdir"], "train.log") for r in runs], f.parallel)
  failed = [r["name"] for r, c in zip(runs, codes) if c]
  print(f"{len(runs) - len(failed)}/{len(runs)} runs finished under {f.workdir}"
        + (f"; failed: {failed}" if failed else ""))
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
