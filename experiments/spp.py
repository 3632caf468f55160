"""Signal Propagation Plots from the command line (SPEC section 5, GitHub issue 3).

Named figures of the paper (600-layer networks, N(0, 1) inputs, 224 px, batch 8)::

  python -m experiments.spp --figure=1 --out=results/spp_figure1     # BN, both orders
  python -m experiments.spp --figure=2 --out=results/spp_figure2     # NF He init / Scaled WS / BN
  python -m experiments.spp --figure=silu --out=results/spp_silu     # figure 2 with SiLU

Free-form runs, one ``--models`` per model (``name:key=value,...``, typed values)::

  python -m experiments.spp --models=nf_resnet:depth=50,skip_gain_init=1 \\
    --models=resnetv2:depth=50,order=relu_bn --resolution=224 --batch_size=8 --out=/tmp/spp

Each run writes ``spp.png``, ``spp.json`` and ``spp.csv`` to ``--out``. BatchNorm
models run with ``is_training=True`` (batch statistics); the other models run
with ``is_training=False``, which switches stochastic depth and dropout off.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import numpy as np

import nfresnet
from experiments.spp_plot import SPPRun, plot_spp, write_csv, write_json

NUM_CLASSES = 1000  # The classifier does not affect the statistics.
IMAGENET_DOWNSAMPLING = 32  # Stem conv stride 2, max pool 2, stages 2 * 2 * 2.
CIFAR_DOWNSAMPLING = 8
NOT_SETTABLE = ("self", "num_classes", "name", "block", "stack_blocks")
GAUSSIAN = "gaussian"
DATASET_INPUTS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")


class UsageError(ValueError):
  """Bad command-line input; reported as one line with exit code 2."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registry entry: constructor, default overrides, and how to run it."""

  constructor: Callable[..., hk.Module]
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_norm: bool = False


MODELS: Mapping[str, ModelEntry] = {
  "nf_resnet": ModelEntry(nfresnet.NFResNet),
  "nf_he": ModelEntry(nfresnet.NFResNet, {"weight_standardization": False, "skip_gain_init": 1.0}),
  "resnetv2": ModelEntry(nfresnet.ResNetV2, batch_norm=True),
  "resnet_v2": ModelEntry(nfresnet.ResNetV2, batch_norm=True),
  "skipinit": ModelEntry(nfresnet.SkipInitResNet),
  "fixup": ModelEntry(nfresnet.FixupResNet),
}
"""Allowed ``--models`` names. ``nf_he`` is the paper's "NF, He init" network."""

NF_600 = "depth=600,skip_gain_init=1"
FIGURES: Mapping[str, tuple[str, tuple[tuple[str, str], ...]]] = {
  "1": (
    "BN ResNet-V2-600 at initialization",
    (
      ("BN-ReLU-Conv", "resnetv2:depth=600,order=bn_relu"),
      ("ReLU-BN-Conv", "resnetv2:depth=600,order=relu_bn"),
    ),
  ),
  "2": (
    "600-layer networks at initialization",
    (
      ("NF, He init", f"nf_he:{NF_600}"),
      ("NF, Scaled WS", f"nf_resnet:{NF_600}"),
      ("BN, ReLU-BN-Conv", "resnetv2:depth=600,order=relu_bn"),
    ),
  ),
  "silu": (
    "600-layer networks at initialization, SiLU (BN reference: ReLU)",
    (
      ("NF, He init, SiLU", f"nf_he:{NF_600},activation=silu"),
      ("NF, Scaled WS, SiLU", f"nf_resnet:{NF_600},activation=silu"),
      ("BN, ReLU-BN-Conv", "resnetv2:depth=600,order=relu_bn"),
    ),
  ),
}
"""Named figures: title and (label, model spec) pairs."""
DEFAULT_RESOLUTION = 224  # SPEC section 5: 224 px or more (padding lowers small maps).
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  """A parsed ``--models`` value."""

  label: str
  spec: str
  name: str
  kwargs: Mapping[str, Any]

  @property
  def entry(self) -> ModelEntry:
    return MODELS[self.name]

  def model_fn(self) -> Callable[[jax.Array], jax.Array]:
    """``model_fn(x)`` for ``nfresnet.signal_propagation``."""
    entry, kwargs = self.entry, dict(self.kwargs)
    return lambda x: entry.constructor(NUM_CLASSES, **kwargs)(x, entry.batch_norm)

  def analytic(self) -> np.ndarray | None:
    """The NF variance curve for Scaled-WS NF-ResNets, else None."""
    params = _settable(self.entry.constructor)
    full = {k: p.default for k, p in params.items()} | dict(self.kwargs)
    if self.entry.constructor is not nfresnet.NFResNet or not full["weight_standardization"]:
      return None
    return nfresnet.expected_signal_variance(full["depth"], full["alpha"])

  def downsampling(self) -> int:
    full = {k: p.default for k, p in _settable(self.entry.constructor).items()}
    stem = (full | dict(self.kwargs)).get("stem", "imagenet")
    return CIFAR_DOWNSAMPLING if stem == "cifar" else IMAGENET_DOWNSAMPLING


def _settable(constructor) -> dict[str, inspect.Parameter]:
  params = inspect.signature(constructor.__init__).parameters
  return {k: p for k, p in params.items() if k not in NOT_SETTABLE}


def parse_value(text: str) -> bool | int | float | str:
  """``true``/``false`` -> bool, then int, then float, else the string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _typed(key: str, value: Any, default: Any, spec: str) -> Any:
  """``value`` checked against the type of the constructor's default."""
  if isinstance(default, bool):
    expected = (bool,)
  elif isinstance(default, int | float):
    expected = (int, float)
  else:
    return value
  if isinstance(value, expected) and not (expected != (bool,) and isinstance(value, bool)):
    return value
  kind = "true or false" if expected == (bool,) else "a number"
  raise UsageError(f"--models={spec}: option {key!r} expects {kind}, got {value!r}")


def parse_model_spec(spec: str, label: str | None = None) -> ModelChoice:
  """Parses and validates ``name:key=value,key=value``.

  Raises:
    UsageError: unknown name or key, malformed text, or a value the model rejects.
  """
  name, _, body = spec.partition(":")
  if name not in MODELS:
    raise UsageError(f"unknown model {name!r} in --models={spec}; allowed: {', '.join(MODELS)}")
  entry = MODELS[name]
  allowed = _settable(entry.constructor)
  kwargs = dict(entry.defaults)
  for item in filter(None, body.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
      raise UsageError(f"malformed --models={spec}: expected name:key=value,key=value")
    if key not in allowed:
      raise UsageError(f"model {name!r} has no option {key!r}; allowed: {', '.join(allowed)}")
    kwargs[key] = _typed(key, parse_value(value), allowed[key].default, spec)
  choice = ModelChoice(label or spec, spec, name, kwargs)
  try:  # Constructors validate depth, order, stem and activation names.
    hk.transform(lambda: entry.constructor(NUM_CLASSES, **kwargs)).init(None)
  except (ValueError, TypeError, KeyError) as error:
    raise UsageError(f"--models={spec}: {error}") from None
  return choice


def make_inputs(kind: str, batch_size: int, resolution: int, seed: int) -> np.ndarray:
  """N(0, 1) images, or the first test-split batch of a dataset at ``resolution``."""
  if kind == GAUSSIAN:
    key = jax.random.key(seed)
    return np.asarray(jax.random.normal(key, (batch_size, resolution, resolution, 3)))
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
  parser = OneLineParser(prog="python -m experiments.spp", description=__doc__.splitlines()[0])
  parser.add_argument("--figure", choices=tuple(FIGURES), help="a named figure of the paper")
  parser.add_argument("--models", action="append", default=[], help="name:key=value,...")
  parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--input", default=GAUSSIAN, help=f"{GAUSSIAN} or a dataset name")
  parser.add_argument("--out", default="results/spp", help="output folder")
  return parser


class OneLineParser(argparse.ArgumentParser):
  """``argparse`` whose usage errors are one line and exit with code 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def check_arguments(args: argparse.Namespace) -> list[ModelChoice]:
  """Validates flags and returns the models to measure."""
  if bool(args.figure) == bool(args.models):
    raise UsageError("give either --figure (one of 1, 2, silu) or one or more --models")
  if args.batch_size < 1:
    raise UsageError(f"--batch_size={args.batch_size} must be at least 1")
  allowed_inputs = (GAUSSIAN,) + DATASET_INPUTS
  if args.input not in allowed_inputs:
    raise UsageError(f"unknown --input={args.input}; allowed: {', '.join(allowed_inputs)}")
  if args.figure:
    choices = [parse_model_spec(spec, label) for label, spec in FIGURES[args.figure][1]]
  else:
    choices = [parse_model_spec(spec) for spec in args.models]
  for choice in choices:
    if args.resolution < choice.downsampling():
      raise UsageError(
        f"--resolution={args.resolution} is too small for {choice.spec}: it downsamples "
        f"by {choice.downsampling()}, so use at least {choice.downsampling()}"
      )
  return choices


def measure_all(choices: Sequence[ModelChoice], inputs: np.ndarray, seed: int) -> list[SPPRun]:
  """Runs ``signal_propagation`` for every model, with a progress bar."""
  from tqdm import tqdm

  devices = jax.local_devices()
  if inputs.shape[0] % len(devices):
    devices = devices[:1]
  runs = []
  progress = tqdm(choices, desc="SPP", unit="model", file=sys.stderr)
  for choice in progress:
    progress.set_postfix_str(choice.label)
    result = nfresnet.signal_propagation(
      choice.model_fn(), inputs, rng=jax.random.key(seed), devices=devices
    )
    runs.append(SPPRun(choice.label, choice.spec, choice.kwargs, result, choice.analytic()))
  return runs


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    choices = check_arguments(args)
    inputs = make_inputs(args.input, args.batch_size, args.resolution, args.seed)
  except UsageError as error:
    print(f"python -m experiments.spp: error: {error}", file=sys.stderr)
    return 2
  runs = measure_all(choices, inputs, args.seed)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  title = FIGURES[args.figure][0] if args.figure else ""
  settings = {
    "figure": args.figure,
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
