"""Model registry: ``config.model_name`` selects a constructor, ``config.model`` its kwargs.

Every model is wrapped in ``hk.transform_with_state`` so the training code has a
single path: normalizer-free models simply carry an empty state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import ml_collections

import nfresnet
from experiments.configs import ConfigError

ModelConstructor = Callable[..., hk.Module]

BUILTIN_MODELS: Mapping[str, ModelConstructor] = {
  "nf_resnet": nfresnet.NFResNet,
  "resnet_v2": nfresnet.ResNetV2,
  "skipinit": nfresnet.SkipInitResNet,
  "fixup": nfresnet.FixupResNet,
  "nf_regnet": nfresnet.NFRegNet,
}
MODELS: dict[str, ModelConstructor] = dict(BUILTIN_MODELS)
"""Allowed ``config.model_name`` values and their constructors (``register_model`` adds)."""

BN_MODELS = frozenset({"resnet_v2"})
"""Models with BatchNorm: their state holds moving statistics."""

ModelFn = Callable[[jax.Array, bool], jax.Array]


def register_model(name: str, constructor: ModelConstructor) -> None:
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

  Raises:
    ValueError: ``name`` is a built-in model or ``constructor`` is not callable.
  """
  if name in BUILTIN_MODELS:
    raise ValueError(f"model_name {name!r} is built in; choose another name")
  if not callable(constructor):
    raise ValueError(f"register_model({name!r}, ...): {constructor!r} is not callable")
  MODELS[name] = constructor


def get_model_class(name: str) -> ModelConstructor:
  """The constructor registered under ``name``; ConfigError listing names otherwise."""
  if name not in MODELS:
    raise ConfigError(f"unknown model_name {name!r}; allowed: {', '.join(sorted(MODELS))}")
  return MODELS[name]


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """Constructor kwargs: ``config.model`` plus ``num_classes``.

  Args:
    config: the experiment config (``model_name``, ``model``, ``train.cross_replica_bn``).
    num_classes: classifier outputs, taken from the dataset.

  Returns:
    Keyword arguments for ``MODELS[config.model_name]``.

  Raises:
    ConfigError: unknown model name or a kwarg the constructor does not accept.
  """
  cls = get_model_class(config.model_name)
  kwargs = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  kwargs["num_classes"] = num_classes
  accepted = inspect.signature(cls).parameters  # A class or a functools.partial.
  unknown = sorted(k for k in kwargs if k not in accepted)
  if unknown:
    allowed = sorted(k for k in accepted if k not in ("self", "name"))
    raise ConfigError(
      f"model {config.model_name!r} does not accept {', '.join(unknown)}; "
      f"allowed: {', '.join(allowed)}"
    )
  return kwargs


def make_model_fn(model_name: str, kwargs: Mapping[str, Any]) -> ModelFn:
  """``model_fn(x, is_training) -> logits``; call it inside a Haiku transform."""
  cls = get_model_class(model_name)

  def model_fn(x: jax.Array, is_training: bool) -> jax.Array:
    return cls(**kwargs)(x, is_training)

  return model_fn


def build_model(
  config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None
) -> hk.TransformedWithState:
  """The transformed model: ``apply(params, state, rng, x, is_training)``.

  Args:
    config: the experiment config.
    num_classes: classifier outputs.
    axis_name: mapped axis for cross-replica BatchNorm, used by BN models when
      ``config.train.cross_replica_bn`` is True.
  """
  kwargs = model_kwargs(config, num_classes)
  if config.model_name in BN_MODELS and config.train.cross_replica_bn:
    kwargs["cross_replica_axis"] = axis_name
  return hk.transform_with_state(make_model_fn(config.model_name, kwargs))


def model_identity(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """What a checkpoint must match to be restored into this model (JSON-serializable)."""
  kwargs = model_kwargs(config, num_classes)
  return {"model_name": config.model_name, "model": {k: kwargs[k] for k in sorted(kwargs)}}
