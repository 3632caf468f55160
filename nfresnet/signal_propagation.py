"""Signal Propagation Plots: per-block statistics of any nfresnet model (paper Section 3).

``signal_propagation`` runs a model on one batch and records, at the output of
every residual block, the average channel squared mean ``mean_C(mean_NHW(x)^2)``
and the average channel variance ``mean_C(var_NHW(x))``, plus the same variance
of the residual-branch output (before stochastic depth, skip gain and alpha).

The hooks live outside the model: a method interceptor
(``hk.intercept_methods``) watches ``ResidualBlock.__call__`` (block input and
output) and ``ResidualBlock.residual_output`` (branch output). Statistics are
reduced to float32 scalars inside the interceptor, so the jitted function
returns a few numbers per block and never keeps activations alive: memory is
that of a plain forward pass.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nfresnet.blocks import ResidualBlock
from nfresnet.layout import RESNET_DEPTHS, expected_variances

BLOCK_STATISTICS = ("avg_sq_mean", "avg_var", "residual_var")
MESH_AXIS = "data"


def channel_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Average channel squared mean and average channel variance (paper Section 3).

  Args:
    x: activations with channels last (NHWC, or any ``[..., C]``).

  Returns:
    ``(mean_C(mean_NHW(x)^2), mean_C(var_NHW(x)))`` in float32, ddof 0.
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return jnp.mean(jnp.square(mean)), jnp.mean(var)


def expected_signal_variance(stage_depths: int | Sequence[int], alpha: float = 0.2) -> np.ndarray:
  """Analytic NF channel variance at each block output: ``1 + k * alpha^2`` with resets.

  The same bookkeeping (``layout.expected_variances``) that sets every NF block's
  ``beta``: after the k-th block of a stage (k = 1 for the transition block) the
  expected variance is ``1 + k * alpha**2`` (paper Section 4, Figure 2).

  Args:
    stage_depths: blocks per stage, or a ResNet depth from the variant table.
    alpha: the residual scale.

  Returns:
    float64 array, one entry per block.
  """
  if isinstance(stage_depths, int):
    if stage_depths not in RESNET_DEPTHS:
      raise ValueError(f"unknown depth {stage_depths}; allowed: {sorted(RESNET_DEPTHS)}")
    stage_depths = RESNET_DEPTHS[stage_depths][0]
  return expected_variances(stage_depths, alpha)[1]


@dataclasses.dataclass
class _BlockRecord:
  """What the interceptor saw for one block call (values are traced scalars)."""

  name: str
  index: int
  stage: int
  expected_var: float
  stats: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


class _Recorder:
  """Method interceptor collecting per-block statistics during one trace."""

  def __init__(self):
    self.blocks: list[_BlockRecord] = []
    self.stem: tuple[jax.Array, jax.Array] | None = None
    self._open: dict[str, _BlockRecord] = {}

  def __call__(self, next_f, args, kwargs, context):
    module = context.module
    if not isinstance(module, ResidualBlock):
      return next_f(*args, **kwargs)
    if context.method_name == "residual_output":
      out = next_f(*args, **kwargs)
      record = self._open.get(module.module_name)
      if record is not None:
        record.stats["residual_var"] = channel_statistics(out)[1]
      return out
    if context.method_name != "__call__":
      return next_f(*args, **kwargs)
    if self.stem is None:
      self.stem = channel_statistics(args[0] if args else next(iter(kwargs.values())))
    spec = module.spec
    record = _BlockRecord(module.module_name, spec.index, spec.stage, spec.expected_var)
    self._open[module.module_name] = record
    out = next_f(*args, **kwargs)
    del self._open[module.module_name]
    record.stats["avg_sq_mean"], record.stats["avg_var"] = channel_statistics(out)
    self.blocks.append(record)
    return out

  def arrays(self) -> dict[str, jax.Array]:
    """Traced statistics stacked over blocks (NaN where a block had no residual)."""
    if not self.blocks:
      raise ValueError("the model has no nfresnet.ResidualBlock: nothing to measure")
    nan = jnp.asarray(jnp.nan, jnp.float32)
    out = {key: jnp.stack([r.stats.get(key, nan) for r in self.blocks]) for key in BLOCK_STATISTICS}
    out["stem_avg_sq_mean"], out["stem_avg_var"] = self.stem
    return out

  def layout(self) -> dict[str, np.ndarray]:
    """Static per-block facts: names, network indices, stages, stage ends, NF curve."""
    stages = np.asarray([r.stage for r in self.blocks], np.int64)
    ends = [i for i in range(len(stages)) if i + 1 == len(stages) or stages[i + 1] != stages[i]]
    return {
      "block_names": np.asarray([r.name for r in self.blocks]),
      "block_index": np.asarray([r.index for r in self.blocks], np.int64),
      "stage": stages,
      "stage_ends": np.asarray(ends, np.int64),
      "expected_var": np.asarray([r.expected_var for r in self.blocks], np.float64),
    }


def _batch_sharding(devices: Sequence[jax.Device] | None, batch: int):
  """``(input sharding, replicated sharding)`` over a 1-D mesh of ``devices``."""
  if not devices:
    return None, None
  if len(devices) == 1:
    single = jax.sharding.SingleDeviceSharding(devices[0])
    return single, single
  if batch % len(devices):
    raise ValueError(f"batch size {batch} is not divisible by {len(devices)} devices")
  mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
  return NamedSharding(mesh, PartitionSpec(MESH_AXIS)), NamedSharding(mesh, PartitionSpec())


def draw_params(fn: Callable[[jax.Array], Any], rng: jax.Array, x: jax.Array) -> hk.Params:
  """The parameters ``hk.transform_with_state(fn).init(rng, x)`` creates, without compiling it.

  ``jax.jit`` of a Haiku ``init`` compiles one random-number kernel per
  parameter (about 0.3 s each on CPU: minutes for the 600-layer network). Here
  the model is traced abstractly (``jax.eval_shape``) while a custom creator
  records each parameter's initializer; the initializers are then called
  eagerly, in creation order and with the same key sequence, so the values
  equal Haiku's, and JAX caches their kernels by shape: a deep network costs a
  handful of small compilations. Models whose parameters bypass custom creators
  (nested transforms such as ``hk.layer_stack``) fall back to ``jax.jit(init)``.

  Args:
    fn: the function to be transformed with ``hk.transform_with_state``.
    rng: initialization key.
    x: an example input (only its shape and dtype are used).

  Returns:
    The parameter dict.
  """
  creations: list[tuple[str, str, tuple[int, ...], Any, Callable]] = []

  def creator(next_creator, shape, dtype, init, context):
    creations.append((context.module_name, context.name, tuple(shape), dtype, init))
    return next_creator(shape, dtype, init)

  def traced(x):
    with hk.custom_creator(creator):
      fn(x)

  shapes, _ = jax.eval_shape(hk.transform_with_state(traced).init, rng, x)

  def draw():
    params: dict[str, dict[str, jax.Array]] = {}
    for module, name, shape, dtype, init in creations:
      params.setdefault(module, {})[name] = jnp.asarray(init(shape, dtype), dtype)
    return params

  params = hk.transform(draw).apply({}, rng)
  if jax.tree.structure(shapes) != jax.tree.structure(params):
    # Some parameters bypass the creator (e.g. made inside hk.layer_stack): fall back
    # to Haiku's compiled init.
    return jax.jit(hk.transform_with_state(fn).init)(rng, x)[0]
  return params


def _init_with_params(fn: Callable[[jax.Array], Any], params: hk.Params):
  """``fn`` under a creator that takes parameter values from ``params``."""

  def creator(next_creator, shape, dtype, init, context):
    value = params[context.module_name][context.name]
    return next_creator(shape, dtype, lambda *_: value)

  def wrapped(x):
    with hk.custom_creator(creator):
      return fn(x)

  return wrapped


def _compile(measured, x, rng, params, state, devices):
  """Draws parameters if needed, places the inputs, and compiles the measurement."""
  at_init = params is None
  if at_init:
    params = draw_params(measured, rng, x)
  state = {} if state is None else state
  batch_sharding, replicated = _batch_sharding(devices, x.shape[0])
  if batch_sharding is not None:
    x = jax.device_put(x, batch_sharding)
    params, state = jax.device_put((params, state), replicated)
  initialized_at = time.perf_counter()

  def run(params, state, rng, x):
    if not at_init:
      return hk.transform_with_state(measured).apply(params, state, rng, x)[0]
    # Haiku's own init pass (state created as ``init`` creates it, e.g. BatchNorm
    # moving averages from this batch) with the pre-drawn parameters; the
    # statistics are taken from that same forward pass.
    outputs = []
    with_params = _init_with_params(measured, params)
    hk.transform_with_state(lambda x: outputs.append(with_params(x))).init(rng, x)
    return outputs[0]

  compiled = jax.jit(run).lower(params, state, rng, x).compile()
  return compiled, params, state, x, initialized_at


def signal_propagation(
  model_fn: Callable[[jax.Array], Any],
  inputs: jax.Array | np.ndarray,
  *,
  rng: jax.Array,
  params: hk.Params | None = None,
  state: hk.State | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> dict[str, np.ndarray]:
  """Measures a Signal Propagation Plot of one model on one batch (paper Section 3).

  Args:
    model_fn: ``model_fn(x)`` builds and applies an nfresnet model (any model made
      of ``nfresnet.ResidualBlock`` subclasses with a ``spec``) inside a Haiku
      transform. It decides ``is_training``: pass ``True`` for BatchNorm models so
      they use batch statistics, as in the paper's Figure 1.
    inputs: one NHWC batch, e.g. N(0, 1) samples or real images.
    rng: key for initialization (when ``params`` is None) and for the forward pass.
    params: trained parameters; None measures the network at initialization.
    state: Haiku state (BatchNorm moving averages) matching ``params``.
    devices: with more than one device the batch is sharded over a 1-D mesh; the
      statistics are global reductions, so the numbers do not depend on it.

  Returns:
    numpy arrays indexed by residual block in call order: ``avg_sq_mean``,
    ``avg_var`` (block outputs), ``residual_var`` (branch outputs, NaN if a block
    does not call ``residual_output``), ``block_names``, ``block_index``,
    ``stage``, ``expected_var`` (each block spec's analytic NF variance),
    ``stage_ends`` (positions of the last block of each stage), and the scalars
    ``stem_avg_sq_mean``, ``stem_avg_var`` (input of the first block);
    ``init_seconds`` (drawing parameters), ``compile_seconds`` (trace and
    compile) and ``run_seconds`` (execution).
  """
  layout: dict[str, np.ndarray] = {}

  def measured(x):
    recorder = _Recorder()
    with hk.intercept_methods(recorder):
      model_fn(x)
    layout.update(recorder.layout())
    return recorder.arrays()

  x = jnp.asarray(inputs)
  start = time.perf_counter()
  try:
    compiled, params, state, x, initialized_at = _compile(measured, x, rng, params, state, devices)
  except jax.errors.UnexpectedTracerError as error:
    raise ValueError(
      "a residual block ran inside a JAX transformation (e.g. stacked blocks under "
      "lax.scan); measure the unrolled model instead"
    ) from error
  compiled_at = time.perf_counter()
  stats = jax.device_get(compiled(params, state, rng, x))
  result = {key: np.asarray(value) for key, value in stats.items()}
  result.update(layout)
  result["init_seconds"] = np.float64(initialized_at - start)
  result["compile_seconds"] = np.float64(compiled_at - initialized_at)
  result["run_seconds"] = np.float64(time.perf_counter() - compiled_at)
  return result
