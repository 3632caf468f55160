"""Signal Propagation Plots from the command line (paper Section 3, Figures 1 and 2).

Named figures of the paper (600-layer networks, N(0, 1) inputs, 224 px, batch 8)::

  python -m experiments.spp --figure=1 --out=results/spp_figure1     # BN, both orders
  python -m experiments.spp --figure=2 --out=results/spp_figure2     # NF He init / Scaled WS / BN
  python -m experiments.spp --figure=silu --out=results/spp_silu     # figure 2 with SiLU

Free-form runs, one ``--models`` per model (``name:key=value,...``, typed values)::

  python -m experiments.spp --models=nf_resnet:depth=50,skip_gain_init=1 \\
    --models=resnetv2:depth=50,order=relu_bn --resolution=224 --batch_size=8 --out=/tmp/spp

A trained run, once with its trained parameters and once at initialization
(the same architecture), at the run's image size and channel count unless
``--resolution`` / ``--input`` say otherwise; ``--models`` may be added::

  python -m experiments.spp --checkpoint=/tmp/nfresnet_quickstart --out=/tmp/spp_trained

Each run writes ``spp.png``, ``spp.json`` and ``spp.csv`` to ``--out``. BatchNorm
models run with ``is_training=True`` (batch statistics); the other models run
with ``is_training=False``, which switches stochastic depth and dropout off.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence

import haiku as hk
import jax
import numpy as np

import nfresnet
from experiments import cli
from experiments.spp.models import (
  MODELS,
  ModelChoice,
  TrainedRun,
  UsageError,
  load_checkpoint,
  parse_model_spec,
  parse_value,
)
from experiments.spp.plot import SPPRun, plot_spp, write_csv, write_json

__all__ = [
  "FIGURES",
  "MODELS",
  "build_parser",
  "check_arguments",
  "main",
  "make_inputs",
  "parse_model_spec",
  "parse_value",
]

GAUSSIAN = "gaussian"
NF_600 = "depth=600,skip_gain_init=1,stem=imagenet_no_pool"
BN_600 = "depth=600,order=relu_bn,stem=imagenet_no_pool,conv_init=he"  # The paper's He init.
FIGURES: Mapping[str, tuple[str, tuple[tuple[str, str], ...]]] = {
  "1": (
    "BN ResNet-V2-600 at initialization",
    (
      ("BN-ReLU-Conv", "resnetv2:depth=600,order=bn_relu,conv_init=he"),
      ("ReLU-BN-Conv", "resnetv2:depth=600,order=relu_bn,conv_init=he"),
    ),
  ),
  "2": (
    "600-layer networks at initialization",
    (
      ("NF, He init", f"nf_he:{NF_600}"),
      ("NF, Scaled WS", f"nf_resnet:{NF_600}"),
      ("BN, ReLU-BN-Conv", f"resnetv2:{BN_600}"),
    ),
  ),
  "silu": (
    "600-layer networks at initialization, SiLU (BN reference: ReLU)",
    (
      ("NF, He init, SiLU", f"nf_he:{NF_600},activation=silu"),
      ("NF, Scaled WS, SiLU", f"nf_resnet:{NF_600},activation=silu"),
      ("BN, ReLU-BN-Conv", f"resnetv2:{BN_600}"),
    ),
  ),
}
"""Named figures: title and (label, model spec) pairs."""
DEFAULT_RESOLUTION = 224  # Zero padding lowers small maps' variances (docs/signal_propagation.md).
DEFAULT_BATCH_SIZE = 8
RGB = 3


def make_inputs(
  kind: str, batch_size: int, resolution: int, seed: int, channels: int = RGB
) -> np.ndarray:
  """N(0, 1) images, or the first test-split batch of a dataset at ``resolution``."""
  if kind == GAUSSIAN:
    key = jax.random.key(seed)
    shape = (batch_size, resolution, resolution, channels)
    return np.asarray(jax.random.normal(key, shape))
  from experiments import data

  config = data.default_data_config()
  config.name = kind
  config.image_size = resolution
  try:
    source = data.load_source(config, "test")
    batch = next(iter(data.eval_batches(source, config, global_batch_size=batch_size)))
  except data.DatasetError as error:
    raise UsageError(str(error).splitlines()[0]) from None
  return batch["image"]


def build_parser() -> argparse.ArgumentParser:
  parser = cli.UsageParser(prog="python -m experiments.spp", description=__doc__.splitlines()[0])
  parser.add_argument("--figure", choices=tuple(FIGURES), help="a named figure of the paper")
  parser.add_argument("--models", action="append", default=[], help="name:key=value,...")
  parser.add_argument("--checkpoint", action="append", default=[], help="a training workdir")
  parser.add_argument(
    "--resolution",
    type=cli.positive_int,
    help=f"default {DEFAULT_RESOLUTION}, or the checkpoint's image size",
  )
  parser.add_argument("--batch_size", type=cli.positive_int, default=DEFAULT_BATCH_SIZE)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--input", default=GAUSSIAN, help=f"{GAUSSIAN} or a dataset name")
  parser.add_argument("--out", default="results/spp", help="output folder")
  return parser


Choice = ModelChoice | TrainedRun


def check_arguments(args: argparse.Namespace) -> list[Choice]:
  """Validates flags, fills in the default ``--resolution``, returns the models to measure."""
  if bool(args.figure) == bool(args.models or args.checkpoint):
    raise UsageError(
      "give either --figure (one of 1, 2, silu) or one or more --models / --checkpoint"
    )
  if args.batch_size < 1:
    raise UsageError(f"--batch_size={args.batch_size} must be at least 1")
  from experiments import data

  allowed_inputs = (GAUSSIAN,) + data.ARRAY_SOURCES
  if args.input not in allowed_inputs:
    raise UsageError(f"unknown --input={args.input}; allowed: {', '.join(allowed_inputs)}")
  if args.figure:
    choices = [parse_model_spec(spec, label) for label, spec in FIGURES[args.figure][1]]
  else:
    choices = [load_checkpoint(workdir) for workdir in args.checkpoint]
    choices += [parse_model_spec(spec) for spec in args.models]
  if args.resolution is None:
    args.resolution = default_resolution([c for c in choices if isinstance(c, TrainedRun)])
  for choice in choices:
    if args.resolution < choice.downsampling():
      raise UsageError(
        f"--resolution={args.resolution} is too small for {choice.spec}: it downsamples "
        f"by {choice.downsampling()}, so use at least {choice.downsampling()}"
      )
  return choices


def default_resolution(trained: Sequence[TrainedRun]) -> int:
  """The checkpoints' common training image size, else ``DEFAULT_RESOLUTION``."""
  sizes = {run.image_size() for run in trained}
  if not sizes:
    return DEFAULT_RESOLUTION
  if len(sizes) > 1 or None in sizes:
    shown = ", ".join(str(size or "stored size") for size in sizes)
    raise UsageError(f"cannot tell the checkpoints' image size ({shown}); give --resolution")
  return sizes.pop()


def checked_inputs(args: argparse.Namespace, choices: Sequence[Choice]) -> np.ndarray:
  """``make_inputs`` with the trained models' channel count (RGB when there is none)."""
  expected = {c.channels() for c in choices if isinstance(c, TrainedRun)} - {None}
  if len(expected) > 1:
    raise UsageError(f"the checkpoints expect different input channels {sorted(expected)}")
  channels = expected.pop() if expected else RGB
  inputs = make_inputs(args.input, args.batch_size, args.resolution, args.seed, channels)
  if inputs.shape[-1] != channels:
    raise UsageError(
      f"--input={args.input} has {inputs.shape[-1]} channels; the checkpoint expects {channels}"
    )
  return inputs


def measure_all(choices: Sequence[Choice], inputs: np.ndarray, seed: int) -> list[SPPRun]:
  """Runs ``signal_propagation`` for every model, with a progress bar."""
  from tqdm import tqdm

  devices = jax.local_devices()
  if inputs.shape[0] % len(devices):
    devices = devices[:1]
  runs = []
  progress = tqdm([m for c in choices for m in c.measurements()], desc="SPP", file=sys.stderr)
  for m in progress:
    progress.set_postfix_str(m.label)
    result = nfresnet.signal_propagation(
      m.model_fn, inputs, rng=jax.random.key(seed), params=m.params, state=m.state, devices=devices
    )
    runs.append(SPPRun(m.label, m.spec, m.kwargs, result, m.analytic, m.mean_field))
  return runs


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    choices = check_arguments(args)
    inputs = checked_inputs(args, choices)
  except UsageError as error:
    return cli.fail(str(error))
  runs = measure_all(choices, inputs, args.seed)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  title = FIGURES[args.figure][0] if args.figure else ""
  settings = {
    "figure": args.figure,
    "checkpoints": list(args.checkpoint),
    "input": args.input,
    "resolution": args.resolution,
    "batch_size": args.batch_size,
    "input_shape": list(inputs.shape),
    "seed": args.seed,
    "jax_version": jax.__version__,
    "haiku_version": hk.__version__,
    "nfresnet_version": nfresnet.__version__,
    "devices": len(jax.local_devices()),
    "platform": jax.default_backend(),
  }
  plot_spp(runs, out / "spp.png", title)
  write_json(runs, settings, out / "spp.json")
  write_csv(runs, out / "spp.csv")
  seconds = sum(float(r.result[k]) for r in runs for k in ("init_seconds", "compile_seconds"))
  print(f"wrote {out}/spp.png, spp.json, spp.csv ({seconds:.0f} s init+compile)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
