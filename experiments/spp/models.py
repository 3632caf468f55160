"""What the SPP command line measures: the ``--models`` registry and ``--checkpoint`` runs.

``parse_model_spec`` turns ``name:key=value,...`` into a ``ModelChoice``;
``load_checkpoint`` turns a training workdir into a ``TrainedRun``. Both give
``Measurement``s: a ``model_fn(x)`` for ``nfresnet.signal_propagation``, with
trained parameters or None (initialization), and the analytic NF curve when the
model has one.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import numpy as np

import nfresnet
from experiments import cli, models, schema
from experiments.models import ModelEntry

NUM_CLASSES = 1000  # The classifier does not affect the statistics.
IMAGENET_DOWNSAMPLING = 32  # Stem conv stride 2, max pool 2, stages 2 * 2 * 2.
CIFAR_DOWNSAMPLING = 8
NOT_SETTABLE = ("block", "stack_blocks")  # Besides models.NOT_CONFIGURABLE.


class UsageError(ValueError):
  """Bad command-line input; reported as one line with exit code 2."""


SPP_DEFAULTS: Mapping[str, Mapping[str, Any]] = {"nf_he": {"skip_gain_init": 1.0}}
"""Signal-propagation settings on top of the registry's defaults: the He-init network is
measured with its residual branches switched on, as in the paper's Figure 2."""

SPP_MODEL_NAMES = ("nf_resnet", "nf_he", "resnet_v2", "skipinit", "fixup")
"""The ResNet family of ``experiments.models``; ``resnetv2`` is accepted as an alias."""


def _spp_entry(name: str) -> ModelEntry:
  entry = models.get_entry(name)
  return dataclasses.replace(entry, defaults=entry.kwargs(SPP_DEFAULTS.get(name, {})))


MODELS: Mapping[str, ModelEntry] = {
  **{name: _spp_entry(name) for name in SPP_MODEL_NAMES},
  "resnetv2": _spp_entry("resnet_v2"),
}
"""Allowed ``--models`` names. ``nf_he`` is the paper's "NF, He init" network."""


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One model to measure: ``model_fn(x)``, and trained ``params``/``state`` or None (init)."""

  label: str
  spec: str
  kwargs: Mapping[str, Any]
  model_fn: Callable[[jax.Array], jax.Array]
  analytic: np.ndarray | None
  params: hk.Params | None = None
  state: hk.State | None = None
  mean_field: Mapping[str, np.ndarray] | None = None


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

  def measurements(self) -> list[Measurement]:
    mean_field = mean_field_curves(self.entry.constructor, self.kwargs)
    return [
      Measurement(
        self.label, self.spec, self.kwargs, self.model_fn(), self.analytic(), mean_field=mean_field
      )
    ]

  def analytic(self) -> np.ndarray | None:
    """The NF variance curve for Scaled-WS NF-ResNets, else None."""
    return analytic_curve(self.entry.constructor, self.kwargs)

  def downsampling(self) -> int:
    return downsampling(self.entry.constructor, self.kwargs)


def _settable(constructor) -> dict[str, inspect.Parameter]:
  params = inspect.signature(constructor).parameters  # A class or a functools.partial.
  skipped = NOT_SETTABLE + models.NOT_CONFIGURABLE
  return {k: p for k, p in params.items() if k not in skipped}


def _full_kwargs(constructor, kwargs: Mapping[str, Any]) -> dict[str, Any]:
  defaults = {k: p.default for k, p in _settable(constructor).items()}
  return defaults | dict(kwargs)


def analytic_curve(constructor, kwargs: Mapping[str, Any]) -> np.ndarray | None:
  """The NF variance curve ``1 + k * alpha^2`` of a Scaled-WS NF-ResNet, else None."""
  full = _full_kwargs(constructor, kwargs)
  if constructor is not nfresnet.NFResNet or not full["weight_standardization"]:
    return None
  return nfresnet.expected_signal_variance(full["depth"], full["alpha"])


def mean_field_curves(constructor, kwargs: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
  """``nfresnet.mean_field_signal_variance`` where it differs from the analytic curve.

  Scaled-WS NF-ResNets with a named activation that is not positively
  homogeneous (SiLU, GELU, ...); None otherwise (ReLU: the same curve), and
  for squeeze-excite or reference-gamma models, which the recursion does not model.
  """
  full = _full_kwargs(constructor, kwargs)
  analytic = analytic_curve(constructor, kwargs)
  if analytic is None or full["use_se"] or full["reference_gammas"]:
    return None
  if not isinstance(full["activation"], str):
    return None
  curves = nfresnet.mean_field_signal_variance(
    full["depth"], full["activation"], alpha=full["alpha"]
  )
  return None if np.allclose(curves["avg_var"], analytic, rtol=1e-6) else curves


def downsampling(constructor, kwargs: Mapping[str, Any]) -> int:
  """Total spatial downsampling of a ResNet-style model (by its stem)."""
  stem = _full_kwargs(constructor, kwargs).get("stem", "imagenet")
  return CIFAR_DOWNSAMPLING if stem == "cifar" else IMAGENET_DOWNSAMPLING


parse_value = cli.parse_scalar


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
    message = schema.model_kwarg_error(name, key, kwargs[key])
    if message:
      raise UsageError(f"--models={spec}: {message}")
  choice = ModelChoice(label or spec, spec, name, kwargs)
  try:  # Constructors validate depth, order, stem and activation names.
    hk.transform(lambda: entry.constructor(NUM_CLASSES, **kwargs)).init(None)
  except (ValueError, TypeError, KeyError) as error:
    raise UsageError(f"--models={spec}: {error}") from None
  return choice


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A ``--checkpoint`` workdir: ``experiments.checkpoint.load_trained`` output."""

  workdir: str
  trained: Any  # experiments.checkpoint.TrainedModel
  constructor: Callable[..., hk.Module]

  @property
  def spec(self) -> str:
    return f"checkpoint:{self.workdir}"

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(self.trained.config.model.to_dict(), model_name=self.trained.config.model_name)

  @property
  def batch_norm(self) -> bool:
    """Models with Haiku state (BatchNorm statistics) run on batch statistics."""
    return bool(jax.tree.leaves(self.trained.state))

  def image_size(self) -> int | None:
    return self.trained.config.data.get("image_size") or None

  def channels(self) -> int | None:
    """Input channels the trained stem conv expects (None if it has no ``stem``)."""
    for module, values in self.trained.params.items():
      if module.split("/")[-1] == "stem" and "w" in values:
        return int(np.shape(values["w"])[2])
    return None

  def downsampling(self) -> int:
    return downsampling(self.constructor, self.trained.config.model.to_dict())

  def measurements(self) -> list[Measurement]:
    """The trained model, then the same architecture at initialization."""
    model_fn, batch_norm = self.trained.model_fn, self.batch_norm
    measured = lambda x: model_fn(x, batch_norm)
    analytic = analytic_curve(self.constructor, self.trained.config.model.to_dict())
    name = pathlib.Path(self.workdir).name or self.workdir
    t = self.trained
    return [
      Measurement(
        f"{name} (trained)", self.spec, self.kwargs, measured, analytic, t.params, t.state
      ),
      Measurement(f"{name} (at init)", f"{self.spec}@init", self.kwargs, measured, analytic),
    ]


def load_checkpoint(workdir: str) -> TrainedRun:
  """Loads a training workdir for ``--checkpoint``.

  Raises:
    UsageError: missing folder, no config, no readable checkpoint (none, or
      all corrupt: ``checkpoint.CheckpointReadError``, a FileNotFoundError), or
      a model name this process does not know.
  """
  from experiments import checkpoint
  from experiments.configs import ConfigError

  if not pathlib.Path(workdir).is_dir():
    raise UsageError(f"--checkpoint={workdir}: no such directory")
  try:
    trained = checkpoint.load_trained(workdir)
    constructor = models.get_model_class(trained.config.model_name)
  except (FileNotFoundError, ValueError, ConfigError) as error:
    raise UsageError(f"--checkpoint={workdir}: {str(error).splitlines()[0]}") from None
  return TrainedRun(workdir, trained, constructor)
