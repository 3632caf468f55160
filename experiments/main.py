r"""Command-line entry point: flags -> ``experiments.train.train_and_evaluate``.

Usage::

  python -m experiments.main --config=experiments/configs/quickstart.py[:arg] \
    --workdir=DIR [--config.train.batch_size=64 ...]

The config is locked, so an override of a field that does not exist fails.
Bad input (unknown names, missing data, indivisible batch size, a workdir of a
different model) prints one ``error: ...`` line and exits with status 2; a
non-finite loss exits with status 1.
"""

from __future__ import annotations

import logging

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.cli import fail

USAGE_ERROR = cli.USAGE_ERROR
TRAINING_ERROR = 1

CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, experiments/configs/<name>.py[:arg].", lock_config=True
)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")


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
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO.

  from experiments import data  # Deferred: --help stays fast.
  from experiments.configs import ConfigError
  from experiments.train import NonFiniteError, train_and_evaluate

  try:
    _, metrics = train_and_evaluate(config, WORKDIR.value)
  except (ConfigError, data.DatasetError) as error:
    return fail(str(error), USAGE_ERROR)
  except NonFiniteError as error:
    return fail(str(error), TRAINING_ERROR)
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
