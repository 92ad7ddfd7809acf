"""Operator errors (full disk, no permission, read-only filesystem) as one line for the user.

Not bugs of the trainer: the entry point prints ``message(exc, workdir)`` alone, with where the
last good checkpoints are, and exits non-zero instead of printing a traceback. Orbax may raise
such an error from its background save thread wrapped in another exception, so the chain of
causes is searched and, failing that, the message text.
"""

from __future__ import annotations

import errno
import os
import re

# errno -> what the operator should hear about it.
_WHAT = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
         errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
         errno.EROFS: "the filesystem is read-only"}
_TEXT = {os.strerror(n): n for n in _WHAT}


def find(exc: BaseException | None) -> tuple[int, str] | None:
  """(errno, the failing OSError's text) of the first operator error in ``exc``'s chain."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _WHAT:
      return exc.errno, str(exc)
    for text, n in _TEXT.items():
      if text in str(exc):
        return n, re.sub(r"\s+", " ", str(exc))[:300]
    exc = exc.__cause__ or exc.__context__
  return None


def checkpoint_steps(workdir: str) -> list[int]:
  """The committed steps under ``<workdir>/checkpoints`` (orbax renames a step dir to its
  number only once the save is complete)."""
  root = os.path.join(workdir, "checkpoints")
  try:
    return sorted(int(n) for n in os.listdir(root) if n.isdigit())
  except OSError:
    return []


def message(exc: BaseException, workdir: str) -> str | None:
  """One line for an operator error (None for anything else)."""
  found = find(exc)
  if found is None:
    return None
  n, text = found
  steps = checkpoint_steps(workdir)
  where = os.path.abspath(os.path.join(workdir, "checkpoints"))
  last = (f"the last good checkpoints: steps {steps} in {where}" if steps
          else f"no checkpoint saved yet in {where}")
  return (f"{_WHAT[n]} ({errno.errorcode[n]}): {text}; {last}. Free space or fix the"
          " permissions, then rerun the same command to resume.")
