"""Validate, train, and turn every failure into one ``error:`` line and its exit status.

``launch(config, workdir)`` is what ``python -m experiments.main`` runs after parsing its
flags; it defines no flags, so tests and notebooks call it directly. Exit statuses
(``experiments.cli``): 0 done, 1 an internal error (its traceback only with
``debug=True``), 2 bad input (nothing was run or written), 3 diverged, 4 an I/O failure,
5 interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
from collections.abc import Iterator

import ml_collections

from experiments import cli, paths
from experiments.cli import USAGE_ERROR, fail


def check_workdir(workdir: str) -> None:
  """The workdir is (or can be created as) a directory this process can write in.

  Raises:
    ConfigError: it is a file, cannot be created or cannot be written.
  """
  from experiments.configs import ConfigError

  path = paths.as_path(workdir, "--workdir")
  try:
    if path.exists() and not path.is_dir():
      raise ConfigError(f"--workdir={workdir} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    if paths.is_local(path):
      with tempfile.TemporaryFile(dir=path):
        pass
  except OSError as error:
    raise ConfigError(f"--workdir={workdir} is not writable: {error.strerror or error}") from None
  except ImportError as error:  # fsspec's message names the package a URL scheme needs.
    raise ConfigError(f"--workdir={workdir}: {error}") from None


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
  try:
    folder = paths.as_path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.exists() else []
  except Exception:  # noqa: BLE001 - only a hint in an error message.
    return "the checkpoints could not be listed"
  return f"the last checkpoint is step {max(steps)}" if steps else "no checkpoint was saved"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
  """SIGTERM raises ``cli.Interrupted`` (as SIGINT raises KeyboardInterrupt) while inside;
  SIGXFSZ is ignored, so a file-size limit is an I/O error rather than a kill.

  The training loop replaces both handlers while it runs (``train.StopRequest``): a
  signal there stops the run at the next step boundary with a checkpoint of that step.
  """

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


def launch(
  config: ml_collections.ConfigDict,
  workdir: str,
  debug: bool = False,
  allow_config_changes: bool = False,
) -> int:
  """Validates the config and the workdir, trains, and maps each failure to its exit status.

  ``allow_config_changes``: resume a workdir whose ``config.json`` differs
  (``experiments.resume_check``).
  """
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO.
  from experiments import data, schema  # Deferred: --help stays fast.
  from experiments.configs import ConfigError

  try:
    schema.validate(config)
    check_workdir(workdir)
  except ConfigError as error:
    return fail(str(error), USAGE_ERROR)
  from experiments.train import NonFiniteError, TrainingInterrupted, train_and_evaluate

  try:
    with interruptible():
      _, metrics = train_and_evaluate(config, workdir, allow_config_changes)
  except (ConfigError, data.DatasetError) as error:
    return fail(str(error), USAGE_ERROR)
  except NonFiniteError as error:
    return fail(str(error), cli.DIVERGED)
  except TrainingInterrupted as error:
    return fail(f"{error}; rerun the same command to resume", cli.INTERRUPTED)
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
