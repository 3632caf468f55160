"""Train and eval steps: per-device bodies under ``jax.shard_map`` on a 1-D ``data`` mesh.

pmap semantics in current JAX: the state is replicated (``P()``), the batch is
split over the ``data`` axis (``P("data")``), each device runs the same program
on its shard and gradients, metrics and BatchNorm statistics are averaged with
explicit ``pmean``. ``check_vma=False`` keeps per-device gradients per device
(with it on, JAX would already sum gradients of replicated parameters).

Gradient accumulation (``train.grad_accum_steps = k``) splits each device's batch
into ``k`` equal micro-batches and runs forward and backward on them one after
another (a ``jax.lax.scan``), so activation memory is that of one micro-batch. The
mean of the ``k`` micro-batch gradients (each the mean over its micro-batch) is the
gradient of the whole batch; it is averaged over devices and applied in one
optimizer update, exactly as without accumulation. BatchNorm statistics are threaded
through the micro-batches in order, so a BN model normalizes each micro-batch with
its own statistics and updates its moving averages ``k`` times per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import optim
from experiments.train_state import TrainState, step_key

AXIS = "data"
GRADIENT_MEAN = "gradient_mean"  # Named scopes of the step's collectives (benchmarks.collectives).
METRICS_MEAN = "metrics_mean"
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``data`` over ``devices`` (default: every device of every process).

  All devices go through ``jax.make_mesh`` (its topology-aware order); a subset
  (``train.num_devices``) keeps the order given, since that ordering needs a whole TPU slice.
  """
  devices = jax.devices() if devices is None else list(devices)
  if len(devices) == jax.device_count():
    return jax.make_mesh((len(devices),), (AXIS,), devices=devices)
  explicit = (jax.sharding.AxisType.Explicit,)  # As jax.make_mesh.
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,), axis_types=explicit)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy in float32 with label smoothing.

  Args:
    logits: ``[B, K]`` in any dtype (computed in float32).
    labels: int ``[B]`` class indices or float ``[B, K]`` soft targets (MixUp).
    label_smoothing: eps; targets become ``(1 - eps) * y + eps / K``.

  Returns:
    ``[B]`` float32 losses.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  if labels.ndim == logits.ndim:
    targets = labels.astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, targets)


def hard_labels(labels: jax.Array) -> jax.Array:
  """Class indices from int labels or soft targets (argmax)."""
  return labels if labels.ndim == 1 else jnp.argmax(labels, axis=-1)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
  """The EMA decay used after training step ``step`` (0-based count of completed steps).

  With ``warmup`` (the reference implementation's "tf1" EMA) the decay is
  ``min(decay, (1 + step) / (10 + step))``: 0.1 after the first step, so early averages
  follow the parameters instead of their initial values. Without it, ``decay``.
  """
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, new: Any, decay: jax.Array) -> Any:
  """``ema <- decay * ema + (1 - decay) * new`` on float leaves (None stays None).

  Integer leaves (counters in BatchNorm statistics) take the new value.
  """
  if ema is None:
    return None

  def average(e, n):
    if not jnp.issubdtype(jnp.asarray(n).dtype, jnp.floating):
      return n
    return (decay * e + (1.0 - decay) * n).astype(n.dtype)

  return jax.tree.map(average, ema, new)


def mean_over_devices(x: jax.Array) -> jax.Array:
  """``pmean`` over ``data`` for float leaves; integer leaves (counters) are identical."""
  return jax.lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.floating) else x


def micro_batches(batch: Batch, num: int) -> Batch:
  """Splits every ``[B, ...]`` leaf of ``batch`` into ``[num, B // num, ...]`` (in order).

  Micro-batch ``i`` holds examples ``i * B // num`` to ``(i + 1) * B // num - 1``.

  Raises:
    ValueError: ``B`` is not a multiple of ``num``.
  """

  def split(x: jax.Array) -> jax.Array:
    if x.shape[0] % num:
      raise ValueError(f"a batch of {x.shape[0]} does not split into {num} micro-batches")
    return x.reshape(num, x.shape[0] // num, *x.shape[1:])

  return jax.tree.map(split, batch)


def train_step_body(
  model: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  lr_fn: optax.Schedule,
  *,
  label_smoothing: float,
  compute_dtype: jnp.dtype,
  ema_decay: float,
  ema_warmup: bool = True,
  grad_accum_steps: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The per-device training program (runs inside ``shard_map`` over ``data``).

  Args:
    model: the transformed model.
    optimizer: the optax chain.
    lr_fn: the learning-rate schedule (reported in the metrics).
    label_smoothing: label-smoothing epsilon of the loss.
    compute_dtype: dtype the images (and so the activations) are cast to.
    ema_decay: EMA decay of the parameters; 0 keeps no EMA.
    ema_warmup: the reference's EMA warm-up (``ema_decay_at``).
    grad_accum_steps: micro-batches per device batch, which must divide it. The
      gradient is the mean of the micro-batch gradients, the loss and accuracy the
      mean of theirs; the micro-batch random keys fold in the micro-batch index.
      1 runs the whole device batch at once.

  Returns:
    ``body(state, batch) -> (state, metrics)``; gradients, metrics and model
    state (BN statistics) are ``pmean``-ed over the ``data`` axis.

  Raises:
    ValueError: ``grad_accum_steps`` is not a positive integer.
  """
  if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int):
    raise ValueError(f"grad_accum_steps={grad_accum_steps!r} is not an integer >= 1")
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps={grad_accum_steps!r} is not an integer >= 1")

  def gradients(params, model_state, images, labels, key):
    """Mean-loss gradient of one (micro-)batch, the new model state and its metrics."""

    def loss_fn(p):
      logits, new_state = model.apply(p, model_state, key, images, is_training=True)
      loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
      return loss, (logits, new_state)

    (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    correct = jnp.argmax(logits, axis=-1) == hard_labels(labels)
    return grads, new_state, {"loss": loss, "accuracy": jnp.mean(correct.astype(jnp.float32))}

  def accumulated(params, model_state, images, labels, key):
    """``gradients`` averaged over ``grad_accum_steps`` micro-batches, run in sequence."""
    micro = micro_batches({"image": images, "label": labels}, grad_accum_steps)

    def one(carry, scanned):
      grad_sum, state_in, metric_sum = carry
      index, batch = scanned
      micro_key = jax.random.fold_in(key, index)
      grads, state_out, metrics = gradients(
        params, state_in, batch["image"], batch["label"], micro_key
      )
      add = functools.partial(jax.tree.map, jnp.add)
      return (add(grad_sum, grads), state_out, add(metric_sum, metrics)), None

    zeros = functools.partial(jax.tree.map, jnp.zeros_like)
    metric_zeros = {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32)}
    init = (zeros(params), model_state, metric_zeros)
    indices = jnp.arange(grad_accum_steps)
    (grad_sum, model_state, metric_sum), _ = jax.lax.scan(one, init, (indices, micro))
    scale = 1.0 / grad_accum_steps
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grad_sum)
    return grads, model_state, jax.tree.map(lambda m: m * scale, metric_sum)

  def body(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    key = jax.random.fold_in(step_key(state), jax.lax.axis_index(AXIS))
    images = batch["image"].astype(compute_dtype)
    compute = gradients if grad_accum_steps == 1 else accumulated
    grads, model_state, metrics = compute(
      state.params, state.model_state, images, batch["label"], key
    )
    with jax.named_scope(GRADIENT_MEAN):
      grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    with jax.named_scope(METRICS_MEAN):
      metrics = jax.lax.pmean(metrics, AXIS)
    metrics.update(
      learning_rate=jnp.asarray(lr_fn(state.step), jnp.float32),
      grad_norm=optim.global_norm(grads),
      update_norm=optim.global_norm(updates),
      param_norm=optim.global_norm(params),
    )
    model_state = jax.tree.map(mean_over_devices, model_state)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    new_state = TrainState(
      step=state.step + 1,
      params=params,
      model_state=model_state,
      opt_state=opt_state,
      ema_params=ema_update(state.ema_params, params, decay),
      rng=state.rng,
      ema_model_state=ema_update(state.ema_model_state, model_state, decay),
    )
    return new_state, metrics

  return body


def eval_step_body(
  model: hk.TransformedWithState, compute_dtype: jnp.dtype
) -> Callable[[TrainState, Batch], Metrics]:
  """Per-device evaluation: masked sums over the whole mesh (``psum``).

  Returns global sums (``count``, ``correct``, ``loss``; and ``ema_correct``,
  ``ema_loss`` when the state has EMA parameters), so dividing by ``count``
  counts every real example once whatever the process or device count.
  """

  def sums(params, model_state, batch):
    logits, _ = model.apply(
      params, model_state, None, batch["image"].astype(compute_dtype), is_training=False
    )
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
    loss = cross_entropy(logits, batch["label"], 0.0)
    return jnp.sum(correct * mask), jnp.sum(loss * mask)

  def body(state: TrainState, batch: Batch) -> Metrics:
    out = {"count": jnp.sum(batch["mask"].astype(jnp.float32))}
    out["correct"], out["loss"] = sums(state.params, state.model_state, batch)
    if state.ema_params is not None:
      ema_state = state.model_state if state.ema_model_state is None else state.ema_model_state
      out["ema_correct"], out["ema_loss"] = sums(state.ema_params, ema_state, batch)
    return jax.lax.psum(out, AXIS)

  return body


def shard(body: Callable[..., Any], mesh: jax.sharding.Mesh, out_state: bool) -> Callable:
  """Wraps a per-device body ``(state, batch)`` in ``shard_map`` over ``data``."""
  out_specs = (P(), P()) if out_state else P()
  return jax.shard_map(
    body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs, check_vma=False
  )


def make_train_step(
  body: Callable[[TrainState, Batch], tuple[TrainState, Metrics]], mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """``train_step(state, batch) -> (state, metrics)``, jitted once, state donated."""
  return jax.jit(shard(body, mesh, out_state=True), donate_argnums=0)


def make_eval_step(
  body: Callable[[TrainState, Batch], Metrics], mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Batch], Metrics]:
  """``eval_step(state, batch) -> global sums``, jitted once."""
  return jax.jit(shard(body, mesh, out_state=False))


def global_batch(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> Batch:
  """Global arrays sharded over ``data`` from this process's local shard of the batch."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch(tree: Any) -> Any:
  """Replicated device arrays -> host numpy (reads this process's first shard)."""
  return jax.tree.map(
    lambda x: jax.device_get(x.addressable_shards[0].data) if isinstance(x, jax.Array) else x, tree
  )
