"""Keeps the absl log of the entry points readable: orbax and grain log dozens of INFO lines
per checkpoint save or restore; their warnings and errors still come through."""

import logging as std_logging

from absl import logging

_NOISY = ("orbax", "grain")


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    noisy = any(f"/{lib}/" in record.pathname for lib in _NOISY)
    return record.levelno >= std_logging.WARNING or not noisy


def install() -> None:
  """Adds the filter to absl's handler (idempotent); entry points call it first in main."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
