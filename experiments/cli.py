"""Shared command-line plumbing: one-line ``error: ...`` messages and flag parsing.

Every command line of the repository (``experiments.main``, ``experiments.spp``,
``experiments.studies.sweep``, ``experiments.studies.report``, ``benchmarks.*``) reports
bad input through ``fail``: a single ``error: ...`` line on stderr naming the value and
what is allowed, and exit status 2 (``USAGE_ERROR``).

Exit statuses (docs/training.md): 0 done, 1 an internal error (a bug: the traceback is
printed only with ``--debug``), 2 bad input (nothing was run or written), 3 training
diverged (a non-finite loss; the last good checkpoint is kept), 4 an I/O failure (disk
full, permissions), 5 interrupted (SIGINT or SIGTERM; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from absl import flags

INTERNAL_ERROR = 1
USAGE_ERROR = 2
DIVERGED = 3
IO_ERROR = 4
INTERRUPTED = 5


class Interrupted(KeyboardInterrupt):
  """A termination signal (SIGTERM) received while training; ``signal`` is its name."""

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal = signal_name


def fail(message: str, code: int = USAGE_ERROR) -> int:
  """Prints ``error: <message>`` on one line to stderr and returns ``code``.

  Multi-line messages are joined; a message embedding a traceback (config files
  that raise while loading) keeps only its final exception line.
  """
  parts = [part.strip() for part in str(message).splitlines() if part.strip()]
  if any(part.startswith("Traceback (most recent call last)") for part in parts):
    parts = [f"cannot load --config: {parts[-1]}"]
  line = " ".join(parts)
  print(f"error: {line or 'unknown error'}", file=sys.stderr, flush=True)
  return code


def run(
  main: Callable[[list[str]], int],
  errors: tuple[type[Exception], ...] = (flags.Error,),
  describe: Callable[[Exception], str] = str,
  argv: Sequence[str] | None = None,
) -> None:
  """Parses absl flags (bad flags: one line, exit 2), then exits with ``main(argv)``."""
  try:
    parsed = flags.FLAGS(list(sys.argv if argv is None else argv))
  except errors as error:
    sys.exit(fail(describe(error)))
  sys.exit(main(parsed))


class UsageParser(argparse.ArgumentParser):
  """``argparse`` whose usage errors go through ``fail``: one ``error:`` line, exit status 2."""

  def error(self, message: str) -> None:
    sys.exit(fail(message))


def parse_bool(value: str) -> bool:
  """``true``/``false`` (any case, or 1/0) as an argparse ``type``."""
  lowered = value.lower()
  if lowered in ("true", "1"):
    return True
  if lowered in ("false", "0"):
    return False
  raise argparse.ArgumentTypeError(f"{value!r} is not a boolean (true/false)")


def parse_scalar(text: str) -> bool | int | float | str:
  """A ``key=value`` value: ``true``/``false`` -> bool, then int, then float, else the string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _number(text: str, kind: type, allowed: str, ok: Callable[[float], bool]) -> int | float:
  """``text`` as ``kind`` (int or float) if ``ok`` holds, else ``ArgumentTypeError`` naming both."""
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
  if not ok(value):
    raise argparse.ArgumentTypeError(f"{text} is not {allowed}")
  return value


def positive_int(text: str) -> int:
  """An integer >= 1 as an argparse ``type``."""
  return _number(text, int, "a positive integer (allowed: 1, 2, ...)", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
  """An integer >= 0 as an argparse ``type``."""
  return _number(text, int, "a non-negative integer (allowed: 0, 1, ...)", lambda v: v >= 0)


def positive_float(text: str) -> float:
  """A finite number > 0 as an argparse ``type``."""
  return _number(
    text, float, "a positive finite number (allowed: > 0)", lambda v: 0 < v < float("inf")
  )


def fraction(text: str) -> float:
  """A number in [0, 1) as an argparse ``type``."""
  return _number(text, float, "a fraction in [0, 1)", lambda v: 0 <= v < 1)


def int_in_range(low: int, high: int) -> Callable[[str], int]:
  """An argparse ``type``: an integer in ``[low, high]``."""

  def parse(text: str) -> int:
    return _number(text, int, f"an integer in [{low}, {high}]", lambda v: low <= v <= high)

  parse.__name__ = f"int_in_range_{low}_{high}"
  return parse
