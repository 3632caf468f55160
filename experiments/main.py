r"""Command-line entry point: flags -> ``experiments.train.train_and_evaluate``.

Usage::

  python -m experiments.main --config=experiments/configs/quickstart.py[:arg] \
    --workdir=DIR [--config.train.batch_size=64 ...] [--allow_config_changes] [--debug]

``--workdir`` is a local path or a URL (``gs://bucket/run``, ``file:///path``;
``experiments.paths``). Rerunning a command resumes its workdir; a config that differs
from the workdir's ``config.json`` is refused unless ``--allow_config_changes``
(``experiments.resume_check``), and a workdir another run is using is refused.

The config is locked, so an override of a field that does not exist fails; every field
is then checked against its declared type and range (``experiments.schema``) and the
workdir must be a writable directory, all before anything is read or written. Every
failure prints one ``error: ...`` line and exits with its own status
(``experiments.cli``): 2 bad input, 3 diverged, 4 I/O failure, 5 interrupted, 1 an
internal error, whose traceback ``--debug`` shows.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.cli import fail
from experiments.launch import launch

USAGE_ERROR = cli.USAGE_ERROR

CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, experiments/configs/<name>.py[:arg].", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an internal error.")
ALLOW_CONFIG_CHANGES = flags.DEFINE_bool(
  "allow_config_changes",
  False,
  "Resume a workdir even if the config differs from its config.json (beyond the fields "
  "that may change on resume, experiments.resume_check.RESUMABLE).",
)


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
  return launch(
    config, WORKDIR.value, debug=DEBUG.value, allow_config_changes=ALLOW_CONFIG_CHANGES.value
  )


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
