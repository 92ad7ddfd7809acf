"""One trainer per workdir: ``<workdir>/trainer.lock``, held by process 0 for the whole run.

The file holds the holder's pid, host and start time (JSON). Exclusion is ``fcntl.flock``:
the kernel drops the lock when its process dies however it dies (SIGKILL, OOM), so on one host
a stale lock is detected for free: if the flock is free, the holder is gone, and the lock is
taken over with a warning naming the dead holder. flock does not reach across hosts on every
shared filesystem, so a lock file left by ANOTHER host is not trusted to be stale: the run
refuses, naming the holder and how to clear it (delete the file once that run is surely gone).
A clean exit deletes the file. Only process 0 locks (the workdir is shared by all processes of a
job); the others learn the outcome from it, so the whole job stops at start-up together.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Callable, Iterator

from absl import logging

LOCK_FILE = "trainer.lock"


class WorkdirLockedError(RuntimeError):
  """Another trainer holds (or may hold) the workdir; the entry point prints it alone."""


def _holder(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _describe(h: dict) -> str:
  return (f"pid {h.get('pid', '?')} on host {h.get('host', '?')} (started"
          f" {h.get('start_time', '?')})")


def _open_locked(path: str) -> int:
  """An fd of ``path`` holding its flock; the file the path names NOW (a holder that exits
  deletes it: a lock taken on the deleted inode would exclude nobody, so retry)."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirLockedError(
            f"workdir {os.path.dirname(path)} is in use by another trainer:"
            f" {_describe(_holder(path))} holds {path}. Wait for it or stop it, or use another"
            " --workdir.") from None
      raise
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)


def acquire(workdir: str) -> int:
  """Takes the lock (see the module doc); returns its fd for ``release``."""
  path = os.path.join(workdir, LOCK_FILE)
  fd = _open_locked(path)
  old, host = _holder(path), socket.gethostname()
  if old.get("host") not in (None, host):
    os.close(fd)
    raise WorkdirLockedError(
        f"{path} was left by {_describe(old)}, another host: that run may still be alive"
        f" (a lock is not checked across hosts). Once it surely is not, delete {path} and"
        " rerun.")
  if old:
    logging.warning("workdir lock: taking over %s from %s, which no longer holds it (crashed"
                    " or killed)", path, _describe(old))
  me = {"pid": os.getpid(), "host": host,
        "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  os.fsync(fd)
  return fd


def release(workdir: str, fd: int) -> None:
  """Deletes the lock file (while still holding it), then drops the lock."""
  with contextlib.suppress(FileNotFoundError):
    os.unlink(os.path.join(workdir, LOCK_FILE))
  os.close(fd)


@contextlib.contextmanager
def hold(workdir: str, primary: bool = True,
         share: Callable[[str | None], str | None] = lambda why: why) -> Iterator[None]:
  """The lock for the body, taken by the ``primary`` process; ``share`` hands its refusal (or
  None) to every process, so all stop together. Released on any exit."""
  fd, why = None, None
  if primary:
    try:
      fd = acquire(workdir)
    except WorkdirLockedError as e:
      why = str(e)
  why = share(why)
  if why:
    raise WorkdirLockedError(why)
  try:
    yield
  finally:
    if fd is not None:
      release(workdir, fd)
