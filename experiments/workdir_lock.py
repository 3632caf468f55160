"""One training run per workdir: a lock held for the whole run, refused to a second writer.

Two runs writing one workdir interleave their checkpoints and logs, and each one's
orbax start-up removes the other's unfinished saves. So a run takes
``<workdir>/.lock`` before it touches anything else there:

- **Local workdirs**: ``fcntl.flock`` on the file. The kernel drops the lock when the
  process ends, however it ends (``kill -9`` included), so the lock of a dead process
  never stands in the way; the file records the holder (host, pid, start time, written
  once training starts) for the message a second writer gets, and is removed on release.
- **Object stores** (``gs://``...) have no locks: the file is a lease, written with
  the holder and renewed every ``LEASE_RENEW_S`` while training runs. A lease is
  stale (and taken over) when it was not renewed for ``LEASE_STALE_S``, or when it
  names this host and a process that no longer exists. Two runs starting within
  the same second may both miss each other; the lock is a guard, not a consensus.

With several processes (``jax.distributed``), process 0 takes the lock for all and
they share the outcome, so every process of a refused run stops with the same line.
Within one process the lock is re-entrant (a notebook that builds a second trainer
on the same workdir is not a second writer).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from experiments import paths
from experiments.configs import ConfigError

LOCK_FILE = ".lock"
LEASE_RENEW_S = 60.0
LEASE_STALE_S = 600.0


class WorkdirBusyError(ConfigError):
  """Another process is training in this workdir."""


def holder_record() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def describe_holder(record: dict[str, Any] | None) -> str:
  if not record:
    return "another process"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
  return f"process {record.get('pid')} on host {record.get('host')} (since {since})"


def process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """The lock of one workdir (see the module docstring); ``acquire`` / ``release``."""

  def __init__(self, workdir: paths.Path):
    self.workdir = workdir
    self.path = workdir / LOCK_FILE
    self.count = 0  # Re-entrant holds in this process.
    self.fd: int | None = None
    self.renewed = 0.0

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirBusyError naming its holder (nothing else is written)."""
    if self.count == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      if paths.is_local(self.workdir):
        self._flock()
      else:
        self._take_lease()
    self.count += 1

  def release(self) -> None:
    if self.count == 0:
      return
    self.count -= 1
    if self.count:
      return
    if self.fd is not None:
      self.path.unlink(missing_ok=True)  # While locked, so no one else holds this file.
      os.close(self.fd)
      self.fd = None
    elif (self._read() or {}).get("pid") == os.getpid():
      self.path.unlink(missing_ok=True)

  def renew(self) -> None:
    """Renews an object-store lease once ``LEASE_RENEW_S`` have passed; otherwise nothing."""
    if self.fd is None and self.count and time.monotonic() - self.renewed >= LEASE_RENEW_S:
      paths.atomic_write(self.path, json.dumps(holder_record()))
      self.renewed = time.monotonic()

  def _flock(self) -> None:
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self._read()
        os.close(fd)
        raise self._busy(holder) from None
      if self._same_file(fd):
        self.fd = fd
        return
      os.close(fd)  # The holder removed the file as we opened it: lock the new one.

  def _same_file(self, fd: int) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      return False

  def record_holder(self) -> None:
    """Writes this process's host, pid and time into a local lock file, for the message a
    second writer gets. Called once training starts, so a run refused before (another
    model, a changed config) leaves an existing file as it was."""
    if self.fd is not None:
      os.ftruncate(self.fd, 0)
      os.pwrite(self.fd, json.dumps(holder_record()).encode(), 0)

  def _take_lease(self) -> None:
    holder = self._read()
    if holder and not self._stale(holder):
      raise self._busy(holder)
    mine = holder_record()
    paths.atomic_write(self.path, json.dumps(mine))
    self.renewed = time.monotonic()

  def _stale(self, holder: dict[str, Any]) -> bool:
    if time.time() - float(holder.get("time", 0)) > LEASE_STALE_S:
      return True
    same_host = holder.get("host") == socket.gethostname()
    return same_host and not process_alive(int(holder.get("pid", 0)))

  def _read(self) -> dict[str, Any] | None:
    try:
      record = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None
    return record if isinstance(record, dict) else None

  def _busy(self, holder: dict[str, Any] | None) -> WorkdirBusyError:
    return WorkdirBusyError(
      f"--workdir={self.workdir} is in use by {describe_holder(holder)}: one run per "
      "workdir; wait for it to end or use another --workdir"
    )


_held: dict[str, WorkdirLock] = {}  # Workdir -> this process's lock on it.


def acquire(workdir: paths.Path) -> WorkdirLock:
  """Takes (or re-enters) this process's lock on ``workdir``; see the module docstring.

  Raises:
    WorkdirBusyError: another process holds it.
  """
  key = os.fspath(paths.absolute(workdir))
  lock = _held.get(key) or WorkdirLock(paths.absolute(workdir))
  lock.acquire()
  _held[key] = lock
  return lock


def acquire_for_run(workdir: paths.Path) -> WorkdirLock | None:
  """Process 0 takes the lock; with several processes all learn whether it succeeded.

  Returns:
    The lock on process 0, None on the others.

  Raises:
    WorkdirBusyError: on every process, when process 0 could not take it.
  """
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  error, lock = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except WorkdirBusyError as busy:
      error = busy
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(refused) and error is None:
      error = WorkdirBusyError(f"--workdir={workdir} is in use by another run (see process 0)")
  if error is not None:
    raise error
  return lock
