"""``python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/demo``.

Any config value can be overridden, e.g. ``--config.train.steps=200``; an unknown key or a value
of the wrong type fails at flag parsing, naming the key, before JAX does any work.
"""

import os
import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mogao_jax import quiet_logs

_REPO = pathlib.Path(__file__).resolve().parents[2]
_DEFAULT_CONFIG = _REPO / "experiments" / "tiny_cpu.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config", default=str(_DEFAULT_CONFIG),
    help_string="experiment config file (a get_config() module); override values with"
                " --config.section.key=value", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "output directory (checkpoints, logs); default runs/<config file stem>")


def _workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  return os.path.join("runs", pathlib.Path(path.split(":")[0]).stem)


def main(argv):
  quiet_logs.install()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
  # Imported here so flag errors (bad config keys) fail fast, before JAX loads.
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = _workdir()
  logging.info("workdir: %s", os.path.abspath(workdir))
  loop.train(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
