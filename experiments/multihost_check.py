r"""Multi-process check on one machine: N local CPU processes train like 1 process.

Run one copy per process (``tests/test_multihost.py`` does this)::

  python -m experiments.multihost_check --num_processes=2 --process_id=0 \
    --port=12345 --local_devices=1 --workdir=/tmp/mh --out=/tmp/mh/p0.json &
  python -m experiments.multihost_check --num_processes=2 --process_id=1 \
    --port=12345 --local_devices=1 --workdir=/tmp/mh --out=/tmp/mh/p1.json

With ``--num_processes=1`` it runs the single-process reference (no
``jax.distributed``). Each process reads only its shard of every batch; the
loss, evaluation counts and accuracy must match the single-process run. This
script (not the library) selects gloo CPU collectives, which multi-process CPU
runs need.

``--workdir`` may contain ``{process_id}``: each process then gets its own
folder, as with one local disk per host (the run must refuse it).
``--sigterm_at_step=K`` makes this process send itself SIGTERM right after step
K, as a preemption notice to one host does; the run stops at a step all
processes agree on, saves it and exits with status 5 (``cli.INTERRUPTED``), and
rerunning the same command resumes it. ``--no_preemption_service`` turns JAX's
preemption service off (``jax_enable_preemption_service``), as on clusters without
it: the trainer then catches SIGTERM itself and the processes agree on the stop
every ``train.STOP_SYNC_EVERY`` steps. A stop and a ConfigError (such as a
workdir the processes do not share) print the one ``error:`` line and exit
status of ``python -m experiments.main`` (5 and 2). The result file
holds the exit status, the step the run stopped at (None when it finished), the
checkpoint steps in the workdir and the final metrics.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from experiments import cli

PROCESS_ID = "{process_id}"
"""Replaced in ``--workdir`` by this process's id (one folder per process)."""

NOTICE_WAIT_S = 1.0
"""How long the process that sent itself SIGTERM pauses, so that the notice reaches
the other processes before they run on (a real notice comes well before the host goes)."""


def tiny_config(num_steps: int):
  """The quick-start smoke config on 8 px synthetic data (eval split of 40, ragged last batch)."""
  from experiments.configs import quickstart

  config = quickstart.get_config("smoke")
  config.model.width = 0.125
  config.data.image_size = 8
  config.data.synthetic.update(num_train=64, num_test=40, image_size=8, channels=1)
  config.train.update(
    batch_size=16,
    eval_batch_size=16,
    num_steps=num_steps,
    checkpoint_every=2,
    log_every=1,
  )
  return config


def parse_args(argv: list[str] | None = None):
  """The flags; ranges are checked while parsing, combinations after (``cli.fail``, exit 2)."""
  parser = cli.UsageParser(
    prog="python -m experiments.multihost_check", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--num_processes", type=cli.positive_int, default=1)
  parser.add_argument("--process_id", type=cli.non_negative_int, default=0)
  parser.add_argument("--port", type=cli.int_in_range(0, 65535), default=0)
  parser.add_argument("--local_devices", type=cli.positive_int, default=1)
  parser.add_argument("--num_steps", type=cli.positive_int, default=4)
  parser.add_argument("--workdir", required=True, help=f"may contain {PROCESS_ID}")
  parser.add_argument("--out", required=True)
  parser.add_argument(
    "--sigterm_at_step",
    type=cli.non_negative_int,
    default=0,
    help="send this process SIGTERM right after this step (0: never)",
  )
  parser.add_argument(
    "--no_preemption_service",
    action="store_true",
    help="turn JAX's preemption service off (the trainer's own SIGTERM handling)",
  )
  args = parser.parse_args(argv)
  args.workdir = args.workdir.replace(PROCESS_ID, str(args.process_id))
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if args.process_id >= args.num_processes:
    parser.error(
      f"--process_id={args.process_id} must be below --num_processes={args.num_processes}"
    )
  if args.num_processes > 1 and args.port == 0:
    parser.error(f"--num_processes={args.num_processes} needs a coordinator --port in [1, 65535]")
  if os.path.isdir(args.out):
    parser.error(f"--out={args.out} is a directory; it must name the result file")
  if not os.path.isdir(out_dir):
    parser.error(f"--out={args.out}: folder {out_dir} does not exist")
  if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
    parser.error(f"--workdir={args.workdir} exists and is not a folder")
  if args.sigterm_at_step >= args.num_steps:
    parser.error(
      f"--sigterm_at_step={args.sigterm_at_step} must be below --num_steps={args.num_steps}"
    )
  return args


def sigterm_after(train_step: Callable, at_step: int, start: int) -> Callable:
  """``train_step`` that sends this process SIGTERM once step ``at_step`` is dispatched.

  ``start`` is the step the run resumes from; a run resumed past ``at_step`` sends none.
  """
  step = {"done": start}

  def step_then_signal(state: Any, batch: Any) -> Any:
    out = train_step(state, batch)
    step["done"] += 1
    if step["done"] == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(NOTICE_WAIT_S)
    return out

  return step_then_signal


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in ``workdir`` (orbax's temporary folders excluded)."""
  from experiments.checkpoint import CHECKPOINT_DIR

  folder = os.path.join(workdir, CHECKPOINT_DIR)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(name) for name in names if name.isdigit())


def losses_logged(workdir: str) -> list[float] | None:
  """The training losses in ``metrics.jsonl``; None on processes other than 0 (no file)."""
  import jax

  if jax.process_index() != 0:
    return None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if '"train"' in line]


def train(args) -> tuple[int, int | None, dict[str, Any]]:
  """Runs the tiny config: ``(exit status, step it stopped at or None, final metrics)``.

  A stop prints the ``error:`` line of ``experiments.main``; a ConfigError propagates.
  """
  from experiments.train import Trainer, TrainingInterrupted

  trainer = Trainer(tiny_config(args.num_steps), args.workdir)
  if args.sigterm_at_step:
    start = (trainer.checkpointer.steps() or [0])[-1]
    trainer.train_step = sigterm_after(trainer.train_step, args.sigterm_at_step, start)
  try:
    _, metrics = trainer.run()
  except TrainingInterrupted as error:
    cli.fail(f"{error}; rerun the same command to resume", cli.INTERRUPTED)
    return cli.INTERRUPTED, error.step, {"signal": error.signal}
  return 0, None, metrics


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)

  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.no_preemption_service:
      jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  from jax.experimental import multihost_utils

  from experiments.configs import ConfigError

  try:
    status, stopped_at, metrics = train(args)
  except ConfigError as error:  # E.g. a workdir the processes do not share: nothing written.
    return cli.fail(str(error), cli.USAGE_ERROR)
  multihost_utils.sync_global_devices("multihost_check: saved")  # Process 0 renames the last.
  result = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "exit_status": status,
    "stopped_at": stopped_at,
    "checkpoints": checkpoint_steps(args.workdir),
    "losses": losses_logged(args.workdir),
    **metrics,
  }
  with open(args.out, "w") as f:
    json.dump(result, f)
  return status


if __name__ == "__main__":
  sys.exit(main())
