"""``python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/demo``.

Any config value can be overridden, e.g. ``--config.train.steps=200``; an unknown key or a value
of the wrong type fails at flag parsing, naming the key, before JAX does any work.
"""

import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mogao_jax import config_args
from mogao_jax import config_schema
from mogao_jax import quiet_logs
# The entry point of `python -m mogao_jax.train`: it sits on the top floor (WORKSPACE.md),
# plugging the eval layer's hooks into the loop; .importlinter exempts this one import.
from mogao_jax.eval import hooks as eval_hooks
from mogao_jax.train import checkpoint
from mogao_jax.train import loop
from mogao_jax.train import operator_errors
from mogao_jax.train import workdir_lock

_REPO = pathlib.Path(__file__).resolve().parents[2]
_DEFAULT_CONFIG = _REPO / "experiments" / "tiny_cpu.py"


def _unknown_key(argv, error) -> None:
  """Exits naming an override of a key the config lacks (ml_collections' own error is a bare
  AttributeError / KeyError naming neither the flag nor the section)."""
  why = config_args.unknown_overrides(argv, str(_DEFAULT_CONFIG)) or [repr(error)]
  print("FATAL Flags parsing error: " + "; ".join(why), file=sys.stderr)
  sys.exit(1)


def _define_config():
  try:
    return config_flags.DEFINE_config_file(
        "config", default=str(_DEFAULT_CONFIG),
        help_string="experiment config file (a get_config() module); override values with"
                    " --config.section.key=value", lock_config=True)
  except (AttributeError, KeyError) as e:  # the default config's overrides apply right here
    _unknown_key(sys.argv, e)


_CONFIG = _define_config()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "output directory (checkpoints, logs); default runs/<config file stem>")


def _workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  return os.path.join("runs", pathlib.Path(path.split(":")[0]).stem)


def _parse_flags(argv):
  """absl's flag parsing, with an override of an unknown key named (config_args)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' errors for a missing key
    _unknown_key(argv, e)


def main(argv):
  quiet_logs.install()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
  workdir = _workdir()
  logging.info("workdir: %s", os.path.abspath(workdir))
  try:
    loop.train(_CONFIG.value, workdir, hooks=eval_hooks.from_config(_CONFIG.value))
  except (config_schema.ConfigError, checkpoint.ResumeError,
          workdir_lock.WorkdirLockedError) as e:  # the user's values, not a bug: no traceback
    sys.exit(f"error: {e}")
  except Exception as e:  # pylint: disable=broad-except
    why = operator_errors.message(e, workdir)  # a full disk, no permission: one line
    if why is None:
      raise
    sys.exit(f"error: {why}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
