"""What a benchmark runs: the real train and eval steps of ``experiments.steps`` for one case.

A ``Case`` names a model (``experiments.models.MODELS``), its shape and the
step; ``build`` returns the jitted step, abstract arguments (for compile-only
measurements, nothing is initialized) and a function making concrete ones.
The steps come from ``experiments.builder.build`` on the base config (the paper's
Nesterov SGD, momentum 0.9, weight decay off gains and biases, label smoothing), so
the numbers are those of ``experiments.main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

import nfresnet
from benchmarks.conv_impl import CONV_IMPLS, conv_context
from experiments import builder, models, steps
from experiments.configs import base_config
from experiments.train_state import TrainState, init_train_state

MODES = ("train", "eval")
COMPUTE_DTYPES = tuple(builder.COMPUTE_DTYPES)
STEPS_PER_RUN = (
  1000  # Schedule length of the benchmark config: the step's cost does not depend on it.
)


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark configuration.

  Attributes:
    model: ``experiments.models.MODELS`` name or alias (``experiments.models.ALIASES``) of
      the ResNet family (``model_choices``).
    depth: ResNet depth.
    resolution: square input size.
    batch_size: global batch.
    mode: "train" (forward, backward, optimizer update) or "eval" (forward).
    compute_dtype: activation dtype, "float32" or "bfloat16".
    stem: "imagenet" or "cifar".
    num_classes: classifier outputs.
    stack_blocks: NF-ResNet only: scan over each stage's identical blocks.
    weight_standardization: NF-ResNet only: False gives plain convs.
    frozen: eval only: NF with precomputed WS kernels (``nfresnet.freeze``),
      BN with BatchNorm folded (``nfresnet.fold_batchnorm``).
    conv_impl: "auto" (the library's per-convolution choice), "xla"
      (``lax.conv`` everywhere) or "shifted_dots" (matrix products for every
      ungrouped conv up to 3x3); see ``benchmarks.conv_impl``.
  """

  model: str = "nf_resnet"
  depth: int = 50
  resolution: int = 224
  batch_size: int = 16
  mode: str = "train"
  compute_dtype: str = "float32"
  stem: str = "imagenet"
  num_classes: int = 1000
  stack_blocks: bool = False
  weight_standardization: bool = True
  frozen: bool = False
  conv_impl: str = "auto"

  @property
  def model_name(self) -> str:
    return models.ALIASES.get(self.model, self.model)

  @property
  def is_nf(self) -> bool:
    return self.model_name == "nf_resnet"

  def label(self) -> str:
    """Short human-readable description."""
    parts = [f"{self.model_name}-{self.depth}", f"{self.resolution}px", f"b{self.batch_size}"]
    parts += [self.mode, self.compute_dtype]
    if self.stack_blocks:
      parts.append("stacked")
    if not self.weight_standardization:
      parts.append("no-WS")
    if self.frozen:
      parts.append("frozen" if self.is_nf else "BN-folded")
    if self.conv_impl != "auto":
      parts.append(self.conv_impl)
    return " ".join(parts)


def model_choices() -> tuple[str, ...]:
  """Models a ``Case`` can name (the ResNet family: constructors taking ``depth`` and ``stem``)."""
  names = [n for n in models.MODELS if {"depth", "stem"} <= set(models.config_fields(n))]
  return (*names, *(alias for alias, name in models.ALIASES.items() if name in names))


def check_case(case: Case) -> None:
  """Raises ``ValueError`` naming the bad field and what is allowed."""
  nfresnet.layout.check_choice("model", case.model, model_choices())
  nfresnet.layout.check_choice("mode", case.mode, MODES)
  nfresnet.layout.check_choice("compute_dtype", case.compute_dtype, COMPUTE_DTYPES)
  nfresnet.layout.check_choice("depth", case.depth, tuple(nfresnet.layout.RESNET_DEPTHS))
  nfresnet.layout.check_choice("stem", case.stem, nfresnet.layout.STEMS)
  nfresnet.layout.check_choice("conv_impl", case.conv_impl, CONV_IMPLS)
  for name in ("resolution", "num_classes"):
    value = getattr(case, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} {value!r} is not a positive integer (allowed: 1, 2, ...)")
  if case.frozen and case.mode != "eval":
    raise ValueError("frozen applies to --mode=eval only")
  if case.frozen and case.model_name not in ("nf_resnet", "resnet_v2"):
    raise ValueError(f"frozen supports nf_resnet and resnet_v2, not {case.model_name!r}")
  nf_only = case.stack_blocks or not case.weight_standardization
  if nf_only and not case.is_nf:
    raise ValueError("stack_blocks and weight_standardization apply to nf_resnet only")
  if case.batch_size <= 0 or case.batch_size % jax.device_count():
    raise ValueError(
      f"batch_size {case.batch_size} must be a positive multiple of {jax.device_count()} devices"
    )


def model_kwargs(case: Case, *, unrolled: bool = False) -> dict[str, Any]:
  """Constructor kwargs; ``unrolled`` drops ``stack_blocks`` (same FLOPs, countable)."""
  kwargs: dict[str, Any] = dict(num_classes=case.num_classes, depth=case.depth, stem=case.stem)
  if case.is_nf:
    kwargs["weight_standardization"] = case.weight_standardization
    kwargs["stack_blocks"] = case.stack_blocks and not unrolled
  return kwargs


def forward_macs(case: Case) -> int:
  """Multiply-accumulates of one forward pass per example (``nfresnet.count_macs``)."""
  model_fn = models.make_model_fn(case.model_name, model_kwargs(case, unrolled=True))
  shape = (1, case.resolution, case.resolution, 3)
  return nfresnet.count_macs(lambda x: model_fn(x, False), shape)


def step_flops(case: Case) -> float:
  """FLOPs of one step: ``2 * MACs`` per example forward, 3x that for training."""
  passes = 3 if case.mode == "train" else 1
  return 2.0 * passes * forward_macs(case) * case.batch_size


def experiment_config(case: Case) -> ml_collections.ConfigDict:
  """The base experiment config with the case's model, batch and dtype."""
  config = base_config()
  config.model_name = case.model_name
  kwargs = model_kwargs(case)
  del kwargs["num_classes"]
  config.model = ml_collections.ConfigDict(kwargs)
  config.train.update(
    batch_size=case.batch_size,
    eval_batch_size=case.batch_size,
    num_steps=STEPS_PER_RUN,
    compute_dtype=case.compute_dtype,
  )
  config.optimizer.warmup_steps = 0
  return config


def model_wrapper(case: Case):
  """Runs the model under the case's convolution lowering and frozen/folded context."""
  frozen = nfresnet.frozen if case.is_nf else nfresnet.folded_batchnorm

  def wrap(model_fn):
    def wrapped(x: jax.Array, is_training: bool) -> jax.Array:
      with conv_context(case.conv_impl), frozen() if case.frozen else contextlib.nullcontext():
        return model_fn(x, is_training)

    return wrapped

  return wrap


def build_experiment(case: Case) -> builder.Experiment:
  """``experiments.builder.build`` for the case (every device, the case's contexts)."""
  config = experiment_config(case)
  return builder.build(
    config, case.num_classes, STEPS_PER_RUN * case.batch_size, model_wrapper=model_wrapper(case)
  )


def _batch(case: Case, abstract: bool) -> dict[str, Any]:
  shapes = {
    "image": ((case.batch_size, case.resolution, case.resolution, 3), jnp.float32),
    "label": ((case.batch_size,), jnp.int32),
  }
  if case.mode == "eval":
    shapes["mask"] = ((case.batch_size,), jnp.bool_)
  if abstract:
    return {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()}
  key = jax.random.key(1)
  return {
    "image": jax.random.normal(key, shapes["image"][0]),
    "label": jax.random.randint(key, shapes["label"][0], 0, case.num_classes),
    **({"mask": jnp.ones(shapes["mask"][0], jnp.bool_)} if "mask" in shapes else {}),
  }


def _prepare_state(case: Case, state: TrainState) -> TrainState:
  """For frozen eval: parameters frozen (NF) or BatchNorm folded (BN)."""
  if not case.frozen:
    return state
  if case.is_nf:
    return state._replace(params=nfresnet.freeze(state.params))
  folded = nfresnet.fold_batchnorm(state.params, state.model_state)
  return state._replace(params=folded, model_state={})


@dataclasses.dataclass
class Workload:
  """A jitted step and its arguments.

  Attributes:
    step: ``step(state, batch)``; train steps return ``(state, metrics)`` and
      donate the state.
    abstract_args: shape/dtype/sharding-only ``(state, batch)`` for ``lower``.
    make_args: builds concrete ``(state, batch)`` (initializes the model).
  """

  step: Callable[..., Any]
  abstract_args: tuple[Any, Any]
  make_args: Callable[[], tuple[Any, Any]]


def build(case: Case) -> Workload:
  """The jitted real step of ``case`` on a 1-D mesh over every device."""
  check_case(case)
  experiment = build_experiment(case)
  image_shape = (case.resolution, case.resolution, 3)
  step = experiment.train_step if case.mode == "train" else experiment.eval_step
  replicated = steps.replicated_sharding(experiment.mesh)
  sharded = steps.batch_sharding(experiment.mesh)

  def init_live() -> TrainState:
    # Frozen evaluation never calls the model live, so the live (unfrozen) model initializes.
    model = hk.transform_with_state(models.model_fn(experiment.config, case.num_classes))
    optimizer = experiment.optimizer if case.mode == "train" else optax.identity()
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    return _prepare_state(case, init_train_state(model, optimizer, 0, sample, use_ema=False))

  init = jax.jit(init_live, out_shardings=replicated)

  def with_sharding(tree, sharding):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)

  abstract_state = with_sharding(jax.eval_shape(init_live), replicated)
  abstract_batch = with_sharding(_batch(case, abstract=True), sharded)

  def make_args():
    batch = jax.device_put(_batch(case, abstract=False), sharded)
    return init(), batch

  return Workload(step, (abstract_state, abstract_batch), make_args)
