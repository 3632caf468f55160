"""Shared command-line plumbing: one-line ``error: ...`` messages and flag parsing.

Every command line of the repository (``experiments.main``, ``experiments.spp``,
``experiments.studies.sweep``, ``experiments.studies.report``, ``benchmarks.*``) reports
bad input through ``fail``: a single ``error: ...`` line on stderr naming the value and
what is allowed, and exit status 2 (``USAGE_ERROR``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from absl import flags

USAGE_ERROR = 2


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
