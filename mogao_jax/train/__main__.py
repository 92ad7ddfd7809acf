"""``python -m mogao_jax.train --config experiments/tiny_cpu.py --workdir runs/demo``.

Any config value can be overridden, e.g. ``--config.train.steps=200``; an unknown key or a value
of the wrong type fails at flag parsing, naming the key, before JAX does any work.
"""

import logging as std_logging
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

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


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / grain (dozens of lines per checkpoint); keeps warnings."""

  def filter(self, record):
    noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
  # Imported here so flag errors (bad config keys) fail fast, before JAX loads.
  from mogao_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = _workdir()
  logging.info("workdir: %s", os.path.abspath(workdir))
  loop.train(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
