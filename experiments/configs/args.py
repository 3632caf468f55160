"""Config-file arguments: ``--config=FILE:model=nf,depth=101,regularized,smoke``.

One small parser shared by every config file, plus the model section each
``model=`` choice builds. An argument string is a comma-separated list of
``key=value`` pairs and bare flags; every config file declares which keys it
accepts, and anything else is a one-line ``ConfigError`` naming the bad key or
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from experiments.configs import ConfigError
from nfresnet.layout import RESNET_DEPTHS

MODEL_NAMES: Mapping[str, str] = {
  "nf": "nf_resnet",
  "he": "nf_resnet",  # The "NF, He init" network: plain convs, no Scaled WS (paper Figure 2).
  "bn": "resnet_v2",
  "skipinit": "skipinit",
  "fixup": "fixup",
  "nf_regnet": "nf_regnet",
  "bn_regnet": "bn_regnet",  # NF-RegNet's BatchNorm counterpart (paper Section 5.2).
}
"""``model=`` choices and the ``config.model_name`` each selects."""

RESNET_MODELS = ("nf", "he", "bn", "skipinit", "fixup")
REGNET_MODELS = ("nf_regnet", "bn_regnet")  # Take variant= instead of depth=.
REGULARIZED_STOCHDEPTH = 0.1  # "Regularized" NF-ResNets (paper Table 1).
REGULARIZED_DROPOUT = 0.25
STOCHDEPTH_MODELS = frozenset({"nf", "he", "skipinit", "fixup"})  # Have stochdepth_rate.
NF_ALPHA = 0.2  # Residual scale of every NF network (paper Section 4).
NF_SKIP_GAIN_INIT = 0.0  # Zero-init as in the reference implementation; 1.0 for SPPs.
SMOKE_DEPTHS = {"basic": 18, "bottleneck": 26}  # Shallowest ResNet of each block type.
SMOKE_REGNET_VARIANT = "B0"
SMOKE_NFNET_VARIANT = "F0"


@dataclasses.dataclass(frozen=True)
class Key:
  """One accepted argument key.

  Attributes:
    parse: converts the value text (``str``, ``int``, ``float``); ignored for flags.
    choices: the allowed values (empty: any value ``parse`` accepts).
    default: the value when the key is absent (flags: False).
    flag: a bare word without ``=value``.
  """

  parse: Callable[[str], Any] = str
  choices: Sequence[Any] = ()
  default: Any = None
  flag: bool = False


def flag() -> Key:
  """A bare-word argument such as ``regularized`` or ``smoke``."""
  return Key(parse=bool, default=False, flag=True)


def parse_args(arg: str | None, keys: Mapping[str, Key], what: str) -> dict[str, Any]:
  """Parses ``"model=nf,depth=101,regularized"`` against the accepted ``keys``.

  Args:
    arg: the text after ``FILE:`` (None or empty: all defaults).
    keys: accepted keys and how to read them.
    what: the config's name, used in error messages.

  Returns:
    A dict with every key of ``keys``: parsed values, defaults for absent ones.

  Raises:
    ConfigError: unknown key, a flag given a value, a key missing its value, a
      value that does not parse or is not among the choices, a repeated key.
  """
  values = {name: key.default for name, key in keys.items()}
  seen: set[str] = set()
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    name, has_value, text = item.partition("=")
    if name not in keys:
      raise ConfigError(f"unknown {what} argument {name!r}; allowed: {describe_keys(keys)}")
    if name in seen:
      raise ConfigError(f"{what} argument {name!r} given twice in {arg!r}")
    seen.add(name)
    key = keys[name]
    if key.flag != (not has_value):
      form = f"{name}" if key.flag else f"{name}=VALUE"
      raise ConfigError(f"{what} argument {item!r} must be written as {form!r}")
    values[name] = True if key.flag else parse_value(name, text, key, what)
  return values


def parse_value(name: str, text: str, key: Key, what: str) -> Any:
  """Converts one value and checks it against the key's choices."""
  allowed = ", ".join(str(c) for c in key.choices)
  try:
    value = key.parse(text)
  except ValueError:
    hint = f"; allowed: {allowed}" if allowed else f" (expected {key.parse.__name__})"
    raise ConfigError(f"bad {what} value {name}={text!r}{hint}") from None
  if key.choices and value not in key.choices:
    raise ConfigError(f"unknown {what} value {name}={text!r}; allowed: {allowed}")
  return value


def describe_keys(keys: Mapping[str, Key]) -> str:
  """``model=nf|bn, depth=INT, regularized`` for error messages."""
  parts = []
  for name, key in keys.items():
    if key.flag:
      parts.append(name)
    elif key.choices:
      parts.append(f"{name}={'|'.join(str(c) for c in key.choices)}")
    else:
      parts.append(f"{name}={key.parse.__name__.upper()}")
  return ", ".join(parts)


def join_args(*parts: str) -> str:
  """Joins argument strings, dropping empty ones: ``join_args("model=nf", "", "smoke")``."""
  return ",".join(p for p in parts if p)


def resnet_model(
  model: str,
  depth: int,
  *,
  width: float,
  stem: str,
  activation: str = "relu",
  regularized: bool = False,
) -> tuple[str, ml_collections.ConfigDict]:
  """``(config.model_name, config.model)`` for a ResNet-family ``model=`` choice.

  Args:
    model: one of ``RESNET_MODELS``.
    depth: ResNet depth.
    width: channel multiplier.
    stem: "imagenet" or "cifar".
    activation: NF networks only ("nf" and "he"); the others use ReLU.
    regularized: dropout 0.25 before the classifier, plus stochastic depth 0.1
      on models that support it (NF, "he", SkipInit, Fixup; paper Table 1).
      BN-ResNet-V2 gets the dropout only.

  Returns:
    The registry name and the constructor kwargs section.
  """
  kwargs: dict[str, Any] = {"depth": depth, "width": width, "stem": stem, "remat": False}
  if model in ("nf", "he"):
    kwargs.update(alpha=NF_ALPHA, activation=activation, skip_gain_init=NF_SKIP_GAIN_INIT)
    kwargs["stack_blocks"] = False  # True: scan over each stage's blocks (same numbers).
  if model == "nf":
    kwargs["scale_activations"] = True  # False: the control network without gammas.
  if model == "he":
    kwargs["weight_standardization"] = False
  elif model != "nf" and activation != "relu":
    raise ConfigError(f"activation={activation!r} needs model=nf or model=he; {model} uses relu")
  kwargs["dropout_rate"] = REGULARIZED_DROPOUT if regularized else 0.0
  if model in STOCHDEPTH_MODELS:
    kwargs["stochdepth_rate"] = REGULARIZED_STOCHDEPTH if regularized else 0.0
  return MODEL_NAMES[model], ml_collections.ConfigDict(kwargs)


def apply_smoke(config: ml_collections.ConfigDict, *, image_size: int = 16) -> None:
  """Shrinks ``config`` in place to a seconds-long CPU run on synthetic data.

  Tiny width, the CIFAR stem and the shallowest depth of the same block type
  (ResNets: 18 for basic, 26 for bottleneck blocks; NF- and BN-RegNets: B0; NFNets: F0),
  synthetic 16 px images, batch 8 (a multiple of 8 fake devices), 2 training steps, no
  progress bar.
  The model family, activation and regularization stay as chosen.
  """
  if "stem" in config.model:
    config.model.width = 0.0625
    config.model.stem = "cifar"
    config.model.depth = SMOKE_DEPTHS[RESNET_DEPTHS[config.model.depth][1]]
  elif config.model_name == "nfnet":  # F0 at 1/16 width; groups of 8 fit its narrow stages.
    config.model.variant = SMOKE_NFNET_VARIANT
    config.model.width = 0.0625
    config.model.group_width = 8
  else:  # NF-/BN-RegNet: the smallest variant; width multiplies the variant's base widths.
    config.model.variant = SMOKE_REGNET_VARIANT
    config.model.width = 0.125
  data = config.data
  data.name = "synthetic"
  data.image_size = image_size
  data.eval_image_size = None
  data.augment = "none"
  data.randaugment = None
  data.synthetic.image_size = image_size
  data.synthetic.num_train = 64
  data.synthetic.num_test = 16
  data.synthetic.num_classes = 10
  train = config.train
  train.batch_size = 8
  train.eval_batch_size = 8
  train.num_steps = 2
  train.eval_every = 0
  train.checkpoint_every = 0
  train.log_every = 1
  train.progress_bar = False
  config.optimizer.warmup_steps = 1
