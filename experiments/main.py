r"""Command-line entry point: flags -> ``experiments.train.train_and_evaluate``.

Usage::

  python -m experiments.main --config=experiments/configs/quickstart.py[:arg] \
    --workdir=DIR [--config.train.batch_size=64 ...] [--debug]

The config is locked, so an override of a field that does not exist fails; every field
is then checked against its declared type and range (``experiments.schema``) and the
workdir must be a writable directory, all before anything is read or written. Every
failure prints one ``error: ...`` line and exits with its own status
(``experiments.cli``): 2 bad input, 3 diverged, 4 I/O failure, 5 interrupted, 1 an
internal error, whose traceback ``--debug`` shows.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import signal
import tempfile
from collections.abc import Iterator

import ml_collections
from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.cli import fail

USAGE_ERROR = cli.USAGE_ERROR

CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, experiments/configs/<name>.py[:arg].", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an internal error.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    return fail(f"unexpected arguments {' '.join(argv[1:])}", USAGE_ERROR)
  try:
    config = CONFIG.value
    if config is not None:
      config.get("model_name")  # A config that failed to load raises on first access.
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
    return fail(str(error), USAGE_ERROR)
  if config is None:
    return fail(
      "--config is required, e.g. --config=experiments/configs/quickstart.py", USAGE_ERROR
    )
  if not WORKDIR.value:
    return fail("--workdir is required", USAGE_ERROR)
  return launch(config, WORKDIR.value, debug=DEBUG.value)


def check_workdir(workdir: str) -> None:
  """The workdir is (or can be created as) a directory this process can write in.

  Raises:
    ConfigError: it is a file, cannot be created or cannot be written.
  """
  from experiments.configs import ConfigError

  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f"--workdir={workdir} is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise ConfigError(f"--workdir={workdir} is not writable: {error.strerror or error}") from None


def io_cause(error: BaseException) -> OSError | None:
  """The OSError behind ``error`` (itself, or in its cause/context chain), if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def describe_io(error: OSError) -> str:
  """``I/O failure: [Errno 28] No space left on device: '<path>'`` (one line)."""
  return f"I/O failure: {error}"


def last_checkpoint(workdir: str) -> str:
  steps = [
    int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").glob("*") if p.name.isdigit()
  ]
  return f"the last checkpoint is step {max(steps)}" if steps else "no checkpoint was saved"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
  """SIGTERM raises ``cli.Interrupted`` (as SIGINT raises KeyboardInterrupt) while inside;
  SIGXFSZ is ignored, so a file-size limit is an I/O error rather than a kill."""

  def on_signal(signum, frame):
    del frame
    raise cli.Interrupted(signal.Signals(signum).name)

  previous = signal.signal(signal.SIGTERM, on_signal)
  if hasattr(signal, "SIGXFSZ"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def launch(config: ml_collections.ConfigDict, workdir: str, debug: bool = False) -> int:
  """Validates the config and the workdir, trains, and maps each failure to its exit status."""
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO.
  from experiments import data, schema  # Deferred: --help stays fast.
  from experiments.configs import ConfigError

  try:
    schema.validate(config)
    check_workdir(workdir)
  except ConfigError as error:
    return fail(str(error), USAGE_ERROR)
  from experiments.train import NonFiniteError, train_and_evaluate

  try:
    with interruptible():
      _, metrics = train_and_evaluate(config, workdir)
  except (ConfigError, data.DatasetError) as error:
    return fail(str(error), USAGE_ERROR)
  except NonFiniteError as error:
    return fail(str(error), cli.DIVERGED)
  except KeyboardInterrupt as error:
    name = error.signal if isinstance(error, cli.Interrupted) else "SIGINT"
    return fail(
      f"interrupted by {name}; {last_checkpoint(workdir)}: rerun the same command to resume",
      cli.INTERRUPTED,
    )
  except Exception as error:  # noqa: BLE001 - every failure is one line (tracebacks: --debug).
    if debug:
      raise
    cause = io_cause(error)
    if cause is not None:
      return fail(f"{describe_io(cause)}; {last_checkpoint(workdir)}", cli.IO_ERROR)
    return fail(
      f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
      cli.INTERNAL_ERROR,
    )
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("eval/"))
  print(f"done: step {metrics['step']}, {summary}", flush=True)
  return 0


def flag_error_message(error: Exception) -> str:
  """The readable text of a flag-parsing error (config_flags wraps unknown fields in KeyError)."""
  while error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]
  if isinstance(error, KeyError) and error.args:
    return f"unknown config field {error.args[0]}"
  return str(error)


def run() -> None:
  """Parses flags (one-line usage errors for bad flags or config files) and runs ``main``."""
  cli.run(
    main,
    errors=(flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError),
    describe=flag_error_message,
  )


if __name__ == "__main__":
  run()
