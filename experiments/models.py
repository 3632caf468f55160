"""The model registry: one name -> constructor table for trainer, SPP, benchmarks, notebooks.

``config.model_name`` selects an entry, ``config.model`` holds its constructor's
keyword arguments (the "config fields" of that model: ``config_fields(name)``).
Every model is wrapped in ``hk.transform_with_state`` so the training code has a
single path: normalizer-free models simply carry an empty state.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import ml_collections

import nfresnet
from experiments.configs import ConfigError

ModelConstructor = Callable[..., hk.Module]

NOT_CONFIGURABLE = ("self", "num_classes", "name")
"""Constructor arguments a config does not set (the dataset gives ``num_classes``)."""
NOT_IDENTITY = ("remat",)
"""Constructor arguments that do not change the parameters (a checkpoint restores either way)."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One registered model.

  Attributes:
    constructor: class (or ``functools.partial``) called as
      ``constructor(num_classes=..., **kwargs)(x, is_training)``.
    defaults: keyword arguments this name fixes unless a config overrides them
      (``nf_he`` is ``NFResNet`` with ``weight_standardization=False``).
    batch_norm: the model has BatchNorm: its state holds moving statistics and
      analysis runs it with ``is_training=True`` (batch statistics).
  """

  constructor: ModelConstructor
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_norm: bool = False

  def kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``overrides``."""
    return {**self.defaults, **overrides}


BUILTIN_MODELS: Mapping[str, ModelEntry] = {
  "nf_resnet": ModelEntry(nfresnet.NFResNet),
  "nf_he": ModelEntry(nfresnet.NFResNet, {"weight_standardization": False}),
  "resnet_v2": ModelEntry(nfresnet.ResNetV2, batch_norm=True),
  "skipinit": ModelEntry(nfresnet.SkipInitResNet),
  "fixup": ModelEntry(nfresnet.FixupResNet),
  "nf_regnet": ModelEntry(nfresnet.NFRegNet),
  "bn_regnet": ModelEntry(nfresnet.BNRegNet, batch_norm=True),
  "nfnet": ModelEntry(nfresnet.NFNet),
}
MODELS: dict[str, ModelEntry] = dict(BUILTIN_MODELS)
"""Allowed ``config.model_name`` values (``register_model`` adds)."""

ALIASES: Mapping[str, str] = {
  "nf": "nf_resnet",
  "he": "nf_he",
  "bn": "resnet_v2",
  "resnetv2": "resnet_v2",
}
"""Short names accepted wherever a model is named on a command line."""


def resolve_name(name: str) -> str:
  """The registry name of ``name`` or of an alias; ConfigError listing the names otherwise."""
  name = ALIASES.get(name, name)
  if name not in MODELS:
    allowed = sorted(MODELS) + sorted(ALIASES)
    raise ConfigError(f"unknown model_name {name!r}; allowed: {', '.join(allowed)}")
  return name


def get_entry(name: str) -> ModelEntry:
  """The registry entry of ``name`` (or an alias)."""
  return MODELS[resolve_name(name)]


def config_fields(name: str) -> dict[str, inspect.Parameter]:
  """The keyword arguments ``config.model`` may set for model ``name``, with their defaults."""
  params = inspect.signature(get_entry(name).constructor).parameters  # A class or a partial.
  return {k: p for k, p in params.items() if k not in NOT_CONFIGURABLE}


def register_model(name: str, constructor: ModelConstructor, *, batch_norm: bool = False) -> None:
  """Makes ``constructor`` selectable as ``config.model_name = name`` (e.g. from a notebook).

  ``constructor(num_classes=..., **config.model)`` must return a Haiku module
  called as ``model(x, is_training)``: a class, or a ``functools.partial`` fixing
  arguments a config cannot hold, e.g.
  ``partial(nfresnet.NFResNet, block=MyBlock, activation=my_fn)``. Its keyword
  arguments are checked against its signature like a built-in model's.
  Registration lasts for the process: ``load_trained`` finds the model only
  where the name is registered.

  Args:
    name: the new ``model_name``. Built-in names cannot be replaced; a name
      registered earlier can (re-running a notebook cell).
    constructor: the model class or partial.
    batch_norm: the model keeps BatchNorm statistics in its Haiku state.

  Raises:
    ValueError: ``name`` is a built-in model or alias, or ``constructor`` is not callable.
  """
  if name in BUILTIN_MODELS or name in ALIASES:
    raise ValueError(f"model_name {name!r} is built in; choose another name")
  if not callable(constructor):
    raise ValueError(f"register_model({name!r}, ...): {constructor!r} is not callable")
  MODELS[name] = ModelEntry(constructor, batch_norm=batch_norm)


def get_model_class(name: str) -> ModelConstructor:
  """The constructor registered under ``name``; ConfigError listing names otherwise."""
  return get_entry(name).constructor


def uses_batch_norm(name: str) -> bool:
  """Whether model ``name`` keeps BatchNorm statistics."""
  return get_entry(name).batch_norm


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """Constructor kwargs: the entry's defaults, ``config.model`` and ``num_classes``.

  Args:
    config: the experiment config (``model_name``, ``model``).
    num_classes: classifier outputs, taken from the dataset.

  Returns:
    Keyword arguments for ``MODELS[config.model_name].constructor``.

  Raises:
    ConfigError: unknown model name or a kwarg the constructor does not accept.
  """
  entry = get_entry(config.model_name)
  section = config.model.to_dict() if hasattr(config.model, "to_dict") else config.model
  kwargs = entry.kwargs(section)
  accepted = config_fields(config.model_name)
  unknown = sorted(k for k in kwargs if k not in accepted)
  if unknown:
    raise ConfigError(
      f"model {config.model_name!r} does not accept {', '.join(unknown)}; "
      f"allowed: {', '.join(sorted(accepted))}"
    )
  kwargs["num_classes"] = num_classes
  return kwargs


ModelFn = Callable[[jax.Array, bool], jax.Array]


def make_model_fn(model_name: str, kwargs: Mapping[str, Any]) -> ModelFn:
  """``model_fn(x, is_training) -> logits``; call it inside a Haiku transform."""
  cls = get_model_class(model_name)

  def model_fn(x: jax.Array, is_training: bool) -> jax.Array:
    return cls(**kwargs)(x, is_training)

  return model_fn


def model_fn(
  config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None
) -> ModelFn:
  """``model_fn(x, is_training) -> logits`` of the config's model (call it inside a transform).

  Args:
    config: the experiment config.
    num_classes: classifier outputs.
    axis_name: mapped axis for cross-replica BatchNorm, used by BN models when
      ``config.train.cross_replica_bn`` is True.
  """
  kwargs = model_kwargs(config, num_classes)
  if uses_batch_norm(config.model_name) and config.train.cross_replica_bn:
    kwargs["cross_replica_axis"] = axis_name
  return make_model_fn(config.model_name, kwargs)


def build_model(
  config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None
) -> hk.TransformedWithState:
  """The transformed model: ``apply(params, state, rng, x, is_training)`` (see ``model_fn``)."""
  return hk.transform_with_state(model_fn(config, num_classes, axis_name))


def model_identity(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """What a checkpoint must match to be restored into this model (JSON-serializable)."""
  kwargs = model_kwargs(config, num_classes)
  kept = sorted(k for k in kwargs if k not in NOT_IDENTITY)
  return {"model_name": config.model_name, "model": {k: kwargs[k] for k in kept}}
