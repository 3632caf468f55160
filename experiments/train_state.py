"""The immutable train state and its initialization."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
  """Everything a training run needs to continue exactly where it stopped.

  Attributes:
    step: number of completed training steps (int32 scalar). The data position
      is this step: the batch iterator is a pure function of (seed, step).
    params: float32 model parameters.
    model_state: Haiku state (BatchNorm moving statistics; empty for NF models).
    opt_state: optimizer state.
    ema_params: exponential moving average of ``params``, or ``None`` when off.
    rng: base key; the key of step ``t`` is ``fold_in(rng, t)``.
    ema_model_state: the same average of ``model_state`` (BatchNorm statistics), as the
      reference implementation keeps it; ``None`` when the EMA is off.
  """

  step: jax.Array
  params: hk.Params
  model_state: hk.State
  opt_state: optax.OptState
  ema_params: hk.Params | None
  rng: jax.Array
  ema_model_state: hk.State | None = None


def init_train_state(
  model: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  seed: int,
  sample_image: jax.Array,
  use_ema: bool,
  convert_params: Callable[[hk.Params], hk.Params] | None = None,
) -> TrainState:
  """Initializes parameters, model state, optimizer state and the EMA copy.

  Args:
    model: the transformed model.
    optimizer: the optax chain.
    seed: experiment seed; parameter init and the step keys derive from it.
    sample_image: a batch with the training input shape (values unused).
    use_ema: keep an EMA copy of the parameters.
    convert_params: applied to the initial parameters before anything else, e.g.
      ``nfresnet.stack_params`` to start a stacked model from the unrolled model's
      initialization (the same numbers, so both train identically).

  Returns:
    The step-0 TrainState (float32 parameters whatever the compute dtype).
  """
  init_key, train_key = jax.random.split(jax.random.key(seed))
  params, model_state = model.init(init_key, sample_image, is_training=True)
  if convert_params is not None:
    params = convert_params(params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=optimizer.init(params),
    ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
    rng=jax.random.key_data(train_key),
    ema_model_state=jax.tree.map(jnp.copy, model_state) if use_ema else None,
  )


def step_key(state: TrainState) -> jax.Array:
  """The typed PRNG key of the current step: ``fold_in(rng, step)``."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


INIT_COMPILER_OPTIONS = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}
"""XLA options for the one-off init program: its compile time dominates start-up
(about 21 s -> 3 s for a ResNet-18 on CPU) and its run time does not matter.
Values agree with an optimized compile to float rounding (6e-8)."""


def create_train_state(
  model: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  seed: int,
  sample_image: jax.Array,
  use_ema: bool,
  sharding: jax.sharding.Sharding,
  convert_params: Callable[[hk.Params], hk.Params] | None = None,
) -> TrainState:
  """``init_train_state`` compiled once (cheaply) with its output placed on ``sharding``."""
  init = lambda: init_train_state(model, optimizer, seed, sample_image, use_ema, convert_params)
  return jax.jit(init, out_shardings=sharding).lower().compile(INIT_COMPILER_OPTIONS)()
