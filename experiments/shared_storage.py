"""Checks that every process of a multi-process run sees the same workdir.

All processes write the orbax checkpoints of a multi-host run into one workdir,
so it must be one directory for all of them: a shared file system or a cloud
bucket. A local path on each host (one disk per host) would otherwise fail late
and slowly: orbax waits for files that the other hosts never see. Before anything
is written, ``check_shared_workdir`` has process 0 write a marker file with a
random token, and every process read it back; if any process cannot, all of
them raise the same one-line ``ConfigError`` within seconds.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from experiments.configs import ConfigError

MARKER_DIR = ".shared_storage"
"""Folder of the marker files, under the workdir (removed again when empty)."""

LISTED_PROCESSES = 8
"""How many of the processes that cannot see the marker the error names."""


def check_shared_workdir(workdir: str | os.PathLike) -> None:
  """Raises ConfigError on every process unless all of them see process 0's files in ``workdir``.

  One process: returns at once, writing nothing. Several: all of them must call
  it (it runs three tiny collectives). Process 0 creates the workdir if needed
  and removes the marker again.

  Raises:
    ConfigError: a process cannot read the file process 0 wrote (one disk per
      host), or process 0 cannot write one.
  """
  if jax.process_count() == 1:
    return
  token = shared_token()
  marker = epath.Path(str(workdir)) / MARKER_DIR / token
  if jax.process_index() == 0:
    write_marker(marker, token)
  multihost_utils.sync_global_devices("shared_storage: marker written")
  seen = multihost_utils.process_allgather(np.array(reads_marker(marker, token), np.int32))
  if jax.process_index() == 0:
    remove_marker(marker)
  missing = [int(i) for i in np.flatnonzero(np.asarray(seen) == 0)]
  if missing:
    raise ConfigError(not_shared_message(str(workdir), missing, jax.process_count()))


def shared_token() -> str:
  """A random hex token that process 0 draws and every process receives."""
  local = np.frombuffer(os.urandom(16), np.uint32)
  token = multihost_utils.broadcast_one_to_all(local)
  return np.asarray(token, np.uint32).tobytes().hex()


def write_marker(marker: epath.Path, token: str) -> None:
  """Writes ``token`` to ``marker``; a failure shows as process 0 not seeing it."""
  try:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
  except Exception:  # noqa: BLE001 - every process must reach the barrier, whatever failed.
    pass


def reads_marker(marker: epath.Path, token: str) -> bool:
  """Whether this process reads ``token`` back from ``marker``."""
  try:
    return marker.exists() and marker.read_text() == token
  except Exception:  # noqa: BLE001 - any backend's error (not found, denied) means unseen.
    return False


def remove_marker(marker: epath.Path) -> None:
  """Removes the marker, and its folder if nothing else is in it."""
  try:
    marker.unlink(missing_ok=True)
    marker.parent.rmdir()
  except OSError:
    pass  # Another run's marker, or nothing was written.


def not_shared_message(workdir: str, missing: list[int], count: int) -> str:
  """The one-line error: which processes do not see process 0's files, and the fix."""
  if 0 in missing:
    return f"--workdir={workdir}: process 0 cannot write a file there and read it back"
  names = ", ".join(str(i) for i in missing[:LISTED_PROCESSES])
  if len(missing) > LISTED_PROCESSES:
    names += f" and {len(missing) - LISTED_PROCESSES} more"
  if len(missing) == 1:
    who = f"process {names} of {count} does"
  else:
    who = f"processes {names} of {count} do"
  return (
    f"--workdir={workdir} is not shared: {who} not see the files process 0 writes there; "
    "use a directory every process reaches (a shared file system or a cloud bucket such as gs://)"
  )
