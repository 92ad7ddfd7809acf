"""Config-path arguments, big_vision style: ``--config experiments/tiny_cpu.py:size=small,res=16``.

ml_collections' ``config_flags`` passes everything after the ``:`` to ``get_config(arg)``;
``parse_arg(arg, **defaults)`` turns that string into a typed ConfigDict. Each default fixes the
type of its key (``res=32`` makes ``res`` an int), so ``res=big`` or an unknown key fails at
once, naming the key. No JAX import here: flag parsing must stay fast.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(key: str, raw: str, default):
  """``raw`` as the type of ``default``; a ValueError names the key on failure."""
  try:
    if isinstance(default, bool):  # before int: bool is an int
      low = raw.lower()
      if low not in _TRUE + _FALSE:
        raise ValueError("not a bool")
      return low in _TRUE
    if isinstance(default, (int, float)):
      return type(default)(raw)
    return raw
  except ValueError:
    raise ValueError(f"config argument {key}={raw!r}: expected {type(default).__name__}"
                     f" (default {default!r})") from None


def split_arg(arg: str | None) -> dict[str, str]:
  """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (raw strings, in order); a bare ``a`` is
  ``a=true``."""
  out: dict[str, str] = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    key = key.strip()
    if not key:
      raise ValueError(f"config argument {item!r}: missing a key before '='")
    if key in out:
      raise ValueError(f"config argument {key!r} given twice in {arg!r}")
    out[key] = value.strip() if eq else "true"
  return out


def join_arg(items: dict[str, object]) -> str:
  """The inverse of ``split_arg`` (for sweeps that vary the config argument)."""
  return ",".join(f"{k}={v}" for k, v in items.items())


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Typed config arguments: ``defaults`` overridden by the ``key=value`` pairs of ``arg``."""
  raw = split_arg(arg)
  unknown = sorted(set(raw) - set(defaults))
  if unknown:
    raise ValueError(f"unknown config argument(s) {unknown} in {arg!r}; known:"
                     f" {sorted(defaults)}")
  values = dict(defaults)
  for key, value in raw.items():
    values[key] = _convert(key, value, defaults[key])
  return ml_collections.ConfigDict(values)


def check_choice(args, key: str, choices) -> None:
  if args[key] not in choices:
    raise ValueError(f"config argument {key}={args[key]!r}: must be one of {list(choices)}")


def load_experiment(path):
  """The module of an experiment file, by path (experiments/ is not a package): how one
  experiment builds on another, e.g. ``load_experiment(Path(__file__).with_name("tiny_cpu.py"))``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"experiment file {str(path)!r} not found")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def unknown_overrides(argv, default_config: str, flag: str = "config") -> list[str]:
  """Why each ``--config.a.b=v`` of ``argv`` names no key of the config it overrides.

  ml_collections' config_flags raises a bare AttributeError / KeyError for such an override
  (naming neither the section nor what it has); the entry points call this to say which
  override is wrong and which keys its section holds instead."""
  path, overrides = default_config, []
  args = iter(argv[1:])
  for a in args:
    if a == f"--{flag}":
      path = next(args, path)
    elif a.startswith(f"--{flag}="):
      path = a.split("=", 1)[1]
    elif a.startswith(f"--{flag}."):
      overrides.append(a[len(flag) + 3:].split("=", 1)[0])
  file, _, arg = path.partition(":")
  config, out = load_experiment(file).get_config(arg or None), []
  for key in overrides:
    node, seen = config, []
    for name in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        where = ".".join(seen) or "the config"
        keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        out.append(f"--{flag}.{key}: {where} has no key {name!r}"
                   + (f" (it has: {', '.join(keys)})" if keys else ""))
        break
      node = node[name]
      seen.append(name)
  return out


def dist_config() -> ml_collections.ConfigDict:
  """The `dist` config section (read by parallel/mesh.py). The defaults mean one process;
  launch/multiprocess_cpu.sh (or a cluster script) sets
  --config.dist.num_processes/process_id/coordinator_address. Here, not in parallel/, so that
  an experiment file can build it without importing JAX."""
  return ml_collections.ConfigDict({
      "coordinator_address": "",  # host:port of process 0; "" = JAX_COORDINATOR_ADDRESS / auto
      "num_processes": 1,
      "process_id": 0,
      "auto": False,  # let JAX detect the cluster (TPU pods, SLURM, Open MPI, k8s)
  })
