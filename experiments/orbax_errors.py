"""Orbax calls without noise, and one-line reasons for their failures.

Orbax runs each restore or save in a fresh asyncio loop and logs TensorStore's long
error messages; a failed read or write then produces hundreds of "Event loop is
closed" tracebacks. ``quiet_orbax`` wraps one orbax call so that a failure is left
to the caller to report in one line (``short_reason``); ``write_error_cause`` finds
the OS error behind a failed save (``CheckpointWriteError``), and
``wait_for_orbax_threads`` lets the writes of a failed save finish before its
temporary folder is removed. Used by ``experiments.checkpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Iterator

import orbax.checkpoint as ocp

MAX_REASON_CHARS = 200

_ORBAX_ROOTS = tuple(  # .../site-packages/orbax/, as imported and with links resolved.
  {os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep}
  | {str(pathlib.Path(ocp.__file__).resolve().parent.parent) + os.sep}
)
# TensorStore reports the errno of a failed file operation in its message.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)|\[OS error (\d+)\]|\[Errno (\d+)\]")
_STATUS_CODE = re.compile(r"^([A-Z][A-Z_]+): ")
_IO_STATUS_CODES = frozenset(
  {"UNKNOWN", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "DATA_LOSS", "UNAVAILABLE"}
)


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, file too large, permissions, I/O error).

  ``str(error)`` is the one-line message ``cannot save checkpoint <step> to
  <dir>: <reason>``; ``errno`` and ``strerror`` are those of the underlying OS
  error when known (else None).

  Args:
    message: the one-line message.
    errno: the OS error number, or None.
    strerror: the OS error text, or None.
  """

  def __init__(self, message: str, errno: int | None = None, strerror: str | None = None):
    super().__init__(message)
    self.errno = errno
    self.strerror = strerror

  def __str__(self) -> str:
    return str(self.args[0])

  def __reduce__(self):
    return type(self), (self.args[0], self.errno, self.strerror)


def wait_for_orbax_threads(timeout_s: float) -> None:
  """Joins orbax's background save threads still running (at most ``timeout_s`` in all).

  A save that fails in one item returns while the writes of the others go on.
  """
  try:
    from orbax.checkpoint._src.futures import future as orbax_future  # noqa: PLC0415

    thread_class = orbax_future._SignalingThread
  except (ImportError, AttributeError):  # Another orbax layout: nothing to wait for.
    return
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if isinstance(thread, thread_class) and thread is not threading.current_thread():
      thread.join(max(0.0, deadline - time.monotonic()))


def short_reason(error: BaseException) -> str:
  """A one-line reason for ``error``: its first line, at most ``MAX_REASON_CHARS``.

  TensorStore messages drop their JSON spec dumps and the chain of drivers
  opened; a long ``CODE: a: b: c`` chain keeps its status code and its last
  (most specific) parts.
  """
  lines = str(error).strip().splitlines()
  text = lines[0].strip() if lines else ""
  text = text.split(" [tensorstore_spec", 1)[0].split(" [source locations", 1)[0]
  text = re.sub(r'Error opening "[^"]+" driver: ', "", text)
  if not _STATUS_CODE.match(text):
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  if len(text) <= MAX_REASON_CHARS:
    return text
  head, _, rest = text.partition(": ")
  parts = rest.split(": ")
  while len(parts) > 1 and len(head) + 4 + len(": ".join(parts)) > MAX_REASON_CHARS:
    parts.pop(0)
  text = f"{head}: ...{': '.join(parts)}"
  return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "..."


def write_error_cause(error: BaseException) -> tuple[int | None, str] | None:
  """(errno or None, reason) when ``error`` is an I/O failure, else None.

  Looks through the exception chain (orbax and TensorStore wrap OS errors in
  ValueError or RuntimeError) for an OSError, then for TensorStore's OS error
  code in a message, then for a TensorStore I/O status code. The reason is the
  OS error text when the errno is known.
  """
  chain, seen, index = [error], set(), 0
  while index < len(chain):
    exc = chain[index]
    index += 1
    if id(exc) in seen:
      continue
    seen.add(id(exc))
    chain.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    chain.extend(getattr(exc, "exceptions", ()))  # Exception groups.
  for exc in chain:
    if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
      if exc.errno is not None:
        return exc.errno, exc.strerror or os.strerror(exc.errno)
      return None, short_reason(exc)
  for exc in chain:
    match = _OS_ERROR_CODE.search(str(exc))
    if match:
      code = int(next(group for group in match.groups() if group))
      return code, os.strerror(code)
  for exc in chain:
    status = _STATUS_CODE.match(str(exc))
    if status and status.group(1) in _IO_STATUS_CODES:
      return None, short_reason(exc)
  return None


class _QuietLoop(asyncio.SelectorEventLoop):
  """An event loop that ignores callbacks and errors that arrive after it is closed.

  Orbax runs each restore or save in a new loop and closes it as soon as one
  read or write fails; the TensorStore operations still in flight then call
  ``call_soon_threadsafe`` on the closed loop, and TensorStore reports each
  "Event loop is closed" error through ``sys.unraisablehook`` (a traceback on
  stderr). Tasks destroyed pending report through ``call_exception_handler``.
  """

  def call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
      return None
    return super().call_soon_threadsafe(callback, *args, context=context)

  def call_exception_handler(self, context):
    if self.is_closed():
      return None
    return super().call_exception_handler(context)


class _QuietLoopPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _QuietLoop


class _OrbaxRecords(logging.Filter):
  """Holds back the log records of orbax's own code and of asyncio."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio" or record.pathname.startswith(_ORBAX_ROOTS):
      self.records.append(record)
      return False
    return True


@contextlib.contextmanager
def quiet_orbax(replay: bool = True) -> Iterator[None]:
  """Silences orbax's logs and asyncio's closed-loop tracebacks for one orbax call.

  Orbax logs through absl (the ``absl`` logger) and the root logger; its
  asyncio loops are the source of the "Event loop is closed" tracebacks
  (TensorStore reports each through ``sys.unraisablehook``). While the block
  runs, records from orbax's code and the ``asyncio`` logger are held back
  (records of other code pass) and new event loops drop callbacks that arrive
  after they are closed. If the block raises, the held records are dropped
  and the caller reports the error in one line.

  Args:
    replay: handle the held records as usual when the block succeeds.
  """
  records = _OrbaxRecords()
  loggers = [logging.getLogger(), logging.getLogger("absl"), logging.getLogger("asyncio")]
  for logger in loggers:
    logger.addFilter(records)
  policy = asyncio.get_event_loop_policy()
  swap = type(policy) is asyncio.DefaultEventLoopPolicy
  if swap:
    asyncio.set_event_loop_policy(_QuietLoopPolicy())
  try:
    yield
  except BaseException:
    records.records.clear()
    raise
  else:
    if not replay:
      records.records.clear()
  finally:
    if swap:
      asyncio.set_event_loop_policy(policy)
    for logger in loggers:
      logger.removeFilter(records)
    for record in records.records:
      logging.getLogger(record.name).handle(record)
