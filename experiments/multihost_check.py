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
"""

from __future__ import annotations

import json
import os
import sys

from experiments import cli


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
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
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
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)

  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  from experiments import steps
  from experiments.train import train_and_evaluate

  state, metrics = train_and_evaluate(tiny_config(args.num_steps), args.workdir)
  losses = None
  if jax.process_index() == 0:  # Only process 0 writes the metrics file.
    with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
      losses = [json.loads(line)["loss"] for line in f if '"train"' in line]
  result = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "step": int(steps.fetch(state.step)),
    "losses": losses,
    **metrics,
  }
  with open(args.out, "w") as f:
    json.dump(result, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
