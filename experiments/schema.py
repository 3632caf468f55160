"""Every config field's type and allowed values, checked once before anything runs.

``validate(config)`` walks the whole config (after command-line overrides) and raises
one ``ConfigError`` naming the first bad field, its value and what is allowed, e.g.
``train.keep_checkpoints=0 is not allowed: an integer >= 1``. ``experiments.builder``
calls it (with the derived checks: batch size against the device count, image size
against the model's downsampling) for the trainer, the benchmarks and the notebooks;
``experiments.data.sources.check_config`` checks the ``data`` section with it.

A ``Field`` declares a kind (``int``, ``float``, ``str``, ``bool``), an optional range
and choices, and whether ``None`` is allowed. Choices may be callables, so the tables
of models, datasets and optimizers are read when a config is checked (a model
registered from a notebook is allowed too). Model fields (``config.model``) are the
constructor arguments of ``config.model_name``; those with a known meaning are
checked here, for the variant and depth tables of the model that takes them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from experiments.configs import ConfigError

Choices = Sequence[Any] | Callable[[], Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class Field:
  """What one config field may hold.

  Attributes:
    kind: ``int``, ``float``, ``str`` or ``bool`` (an ``int`` is a valid ``float``).
    low: smallest allowed value (numbers), or None.
    high: largest allowed value, or None.
    low_open: ``low`` itself is not allowed.
    high_open: ``high`` itself is not allowed.
    choices: the allowed values (or a callable returning them); empty: any.
    optional: ``None`` is allowed.
    note: appended to the description (``0: the stored size``).
  """

  kind: type
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: Choices = ()
  optional: bool = False
  note: str = ""

  def allowed(self) -> Sequence[Any]:
    return self.choices() if callable(self.choices) else self.choices

  def describe(self) -> str:
    """``an integer >= 1``, ``a number in [0, 1)``, ``one of sgd, adamw``."""
    if self.allowed():
      text = f"one of {', '.join(map(str, self.allowed()))}"
    else:
      text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[
        self.kind
      ]
      text += self.describe_range()
    if self.optional:
      text += " (or None)"
    return f"{text}; {self.note}" if self.note else text

  def describe_range(self) -> str:
    if self.low is not None and self.high is not None:
      left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
      return f" in {left}{self.low:g}, {self.high:g}{right}"
    if self.low is not None:
      return f" {'>' if self.low_open else '>='} {self.low:g}"
    if self.high is not None:
      return f" {'<' if self.high_open else '<='} {self.high:g}"
    return ""

  def accepts(self, value: Any) -> bool:
    if value is None:
      return self.optional
    if not self.has_kind(value):
      return False
    if self.allowed():
      return value in self.allowed()
    return self.in_range(value)

  def has_kind(self, value: Any) -> bool:
    if self.kind is bool:
      return isinstance(value, bool)
    if isinstance(value, bool):
      return False
    if self.kind is float:
      return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, self.kind)

  def in_range(self, value: Any) -> bool:
    if self.kind not in (int, float):
      return True
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or (value < self.high or (not self.high_open and value == self.high))


def positive(kind: type = int, **kwargs: Any) -> Field:
  return Field(kind, low=0, low_open=True, **kwargs)


def non_negative(kind: type = int, **kwargs: Any) -> Field:
  return Field(kind, low=0, **kwargs)


def fraction(**kwargs: Any) -> Field:
  """A number in [0, 1)."""
  return Field(float, low=0, high=1, high_open=True, **kwargs)


def _sources() -> Sequence[str]:
  from experiments import data

  return data.SOURCES


def _augments() -> Sequence[str]:
  from experiments.data import sources

  return sources.AUGMENTS


def _resize_methods() -> Sequence[str]:
  from experiments.data import augment

  return augment.RESIZE_METHODS


def _optimizers() -> Sequence[str]:
  from experiments import optim

  return optim.OPTIMIZERS


def _compute_dtypes() -> Sequence[str]:
  return ("float32", "bfloat16", "auto")


def _model_names() -> Sequence[str]:
  from experiments import models

  return sorted(models.MODELS) + sorted(models.ALIASES)


DATA_FIELDS: Mapping[str, Field] = {
  "name": Field(str, choices=_sources),
  "data_dir": Field(str, optional=True),
  "download": Field(bool),
  "tfds_name": Field(str, optional=True),
  "verify": Field(bool),
  "image_size": non_negative(note="0: the stored size"),
  "eval_image_size": positive(optional=True, note="None: image_size"),
  "augment": Field(str, choices=_augments),
  "crop_padding": non_negative(),
  "eval_crop_fraction": Field(float, low=0, high=1, low_open=True, optional=True),
  "resize_method": Field(str, choices=_resize_methods),
  "randaugment": Field(str, optional=True, note="digits 'NMM', e.g. '405'"),
  "validation_examples": non_negative(),
  "mixup_alpha": non_negative(float),
  "cutmix_alpha": non_negative(float),
  "worker_threads": non_negative(),
  "worker_processes": non_negative(note="0: batches built in this process"),
  "prefetch_batches": non_negative(),
  "synthetic.num_train": positive(),
  "synthetic.num_test": positive(),
  "synthetic.num_classes": Field(int, low=2),
  "synthetic.image_size": positive(),
  "synthetic.channels": positive(),
  "synthetic.seed": Field(int),
}

TRAIN_FIELDS: Mapping[str, Field] = {
  "batch_size": positive(),
  "num_steps": positive(optional=True, note="None: train.num_epochs"),
  "num_epochs": positive(float),
  "eval_batch_size": positive(),
  "eval_every": non_negative(note="0: only at the end"),
  "eval_every_epochs": positive(float, optional=True),
  "checkpoint_every": non_negative(note="0: only at the end"),
  "checkpoint_every_minutes": non_negative(float, note="0: off"),
  "keep_checkpoints": positive(note="the final checkpoint is always kept"),
  "log_every": non_negative(note="0: only the last step"),
  "seed": Field(int),
  "compute_dtype": Field(str, choices=_compute_dtypes),
  "label_smoothing": fraction(),
  "ema_decay": fraction(note="0 disables the EMA"),
  "ema_warmup": Field(bool),
  "cross_replica_bn": Field(bool),
  "distributed": Field(bool),
  "progress_bar": Field(bool),
  "grad_accum_steps": positive(note="micro-batches per device batch, a divisor of it"),
  "num_devices": non_negative(note="0: every device; else a multiple of the process count"),
  "profile_steps": Field(str, note="'START:END' traces steps START to END - 1, e.g. '10:20'"),
  "peak_flops_per_device": non_negative(float, note="0: the device table"),
  "compilation_cache_dir": Field(str, note="'': off"),
}

OPTIMIZER_FIELDS: Mapping[str, Field] = {
  "name": Field(str, choices=_optimizers),
  "base_lr": positive(float),
  "scale_by_batch": Field(bool),
  "momentum": fraction(),
  "nesterov": Field(bool),
  "b1": fraction(),
  "b2": fraction(),
  "eps": positive(float),
  "weight_decay": non_negative(float),
  "warmup_epochs": non_negative(float),
  "warmup_steps": non_negative(optional=True),
  "warmup_fraction": fraction(optional=True),
  "end_lr": non_negative(float),
  "agc_clip": non_negative(float, note="0 disables clipping"),
  "agc_eps": positive(float),
}


def _resnet_depths() -> Sequence[int]:
  from nfresnet import layout

  return sorted(layout.RESNET_DEPTHS)


def _stems() -> Sequence[str]:
  from nfresnet import layout

  return layout.STEMS


def _activations() -> Sequence[str]:
  import nfresnet

  return sorted(nfresnet.ACTIVATIONS)


def _conv_inits() -> Sequence[str]:
  from nfresnet import ws_conv

  return sorted(ws_conv.CONV_INITS)


MODEL_FIELDS: Mapping[str, Field] = {
  "depth": Field(int, choices=_resnet_depths),
  "width": positive(float),
  "alpha": positive(float),
  "activation": Field(str, choices=_activations),
  "skip_gain_init": Field(float),
  "stochdepth_rate": fraction(),
  "dropout_rate": fraction(optional=True),
  "use_se": Field(bool),
  "se_ratio": Field(float, low=0, high=1, low_open=True),
  "stem": Field(str, choices=_stems),
  "weight_standardization": Field(bool),
  "reference_gammas": Field(bool),
  "scale_activations": Field(bool),
  "rescale_stochdepth": Field(bool),
  "avg_down": Field(bool),
  "stack_blocks": Field(bool),
  "remat": Field(bool),
  "order": Field(str, choices=("bn_relu", "relu_bn")),
  "bn_decay": fraction(),
  "conv_init": Field(str, choices=_conv_inits),
  "expansion": positive(float),
  "group_width": positive(),
}
"""Model constructor arguments by name; ``variant`` is checked against the model's table."""


def model_variants(model_name: str) -> Sequence[str]:
  """The variant table of ``model_name`` (NFNet F0-F7, NF-RegNet B0-B5), else empty (any)."""
  import nfresnet
  from experiments import models

  constructor = models.get_model_class(model_name)
  base = getattr(constructor, "func", constructor)  # A functools.partial's class.
  tables = (
    (nfresnet.NFNet, nfresnet.NFNET_VARIANTS),
    (nfresnet.NFRegNet, nfresnet.NF_REGNET_VARIANTS),
    (getattr(nfresnet, "BNRegNet", ()), nfresnet.NF_REGNET_VARIANTS),
  )
  for cls, table in tables:
    if isinstance(base, type) and isinstance(cls, type) and issubclass(base, cls):
      return tuple(table)
  return ()


def check(name: str, value: Any, spec: Field) -> None:
  """Raises ConfigError ``name=value is not allowed: <what is>`` when ``spec`` refuses it."""
  if not spec.accepts(value):
    raise ConfigError(f"{name}={value!r} is not allowed: {spec.describe()}")


_MISSING = object()


def check_section(
  prefix: str, section: ml_collections.ConfigDict, fields: Mapping[str, Field]
) -> None:
  """Checks the fields of ``section`` that ``fields`` declares (dotted names inside it)."""
  for dotted, spec in fields.items():
    node: Any = section
    for part in dotted.split("."):
      if not hasattr(node, "get") or part not in node:
        node = _MISSING
        break
      node = node[part]
    if node is not _MISSING:
      check(f"{prefix}.{dotted}", node, spec)


def model_kwarg_error(model_name: str, key: str, value: Any) -> str | None:
  """``key=value is not allowed: ...`` when model argument ``key`` refuses ``value``, else None.

  Shared by the config check and the command lines that take ``name:key=value`` models.
  """
  if key == "variant":
    spec = Field(str, choices=model_variants(model_name))
  else:
    spec = MODEL_FIELDS.get(key)
  if spec is None or spec.accepts(value):
    return None
  return f"{key}={value!r} is not allowed: {spec.describe()}"


def check_model(config: ml_collections.ConfigDict) -> None:
  """``model_name`` and the known fields of ``config.model`` (unknown ones: the builder)."""
  check("model_name", config.model_name, Field(str, choices=_model_names))
  for key, value in config.model.items():
    message = model_kwarg_error(config.model_name, key, value)
    if message:
      raise ConfigError(f"model.{message}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every declared field of an experiment config.

  Raises:
    ConfigError: the first field whose value is not allowed, named with its value and
      what is allowed.
  """
  check_model(config)
  check_section("data", config.data, DATA_FIELDS)
  check_data_values(config.data)
  check_section("train", config.train, TRAIN_FIELDS)
  check_train_values(config.train)
  check_section("optimizer", config.optimizer, OPTIMIZER_FIELDS)


def check_data_values(data: ml_collections.ConfigDict) -> None:
  """Field values with a syntax of their own (the RandAugment level)."""
  from experiments.data import randaugment

  if data.get("randaugment") is not None:
    try:
      randaugment.parse_level(data.randaugment)
    except ValueError as error:
      raise ConfigError(f"data.randaugment={data.randaugment!r} is not allowed: {error}") from None


def check_train_values(train: ml_collections.ConfigDict) -> None:
  """Field values with a syntax of their own (the profiled steps)."""
  from experiments import telemetry

  text = train.get("profile_steps", "")
  try:
    telemetry.parse_profile_steps(text)
  except ValueError as error:
    raise ConfigError(f"train.profile_steps={text!r} is not allowed: {error}") from None
