"""Optimizer (an optax chain) and the schedule values derived from the config at run time.

One predicate over parameter paths, ``is_decayed``, decides which parameters get
weight decay; ``is_clipped`` decides which get adaptive gradient clipping.
Derived values (total steps, warm-up steps, batch-scaled peak learning rate)
are computed here from the config when training starts, so command-line
overrides of batch size or epochs stay consistent (the reference implementation
freezes them at config time; docs/paper_map.md).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import haiku as hk
import jax
import ml_collections
import optax

import nfresnet
from experiments.configs import ConfigError

OPTIMIZERS = ("sgd", "adamw")
REFERENCE_BATCH_SIZE = 256  # lr = base_lr * batch_size / 256 (Goyal et al., 2017; paper Section 5).
DECAYED_PARAM_NAMES = frozenset({"w"})
CLASSIFIER_MODULE = "classifier"


def is_decayed(module_name: str, param_name: str) -> bool:
  """Whether a parameter gets weight decay: conv and linear weights only.

  Gains, biases, skip gains, BN scale/offset and Fixup's scalar biases and
  multipliers are all excluded, as in the reference implementation
  (docs/paper_map.md). The rule relies on Haiku's stable parameter names: every
  weight matrix or kernel is called ``w``.

  Args:
    module_name: Haiku module path, e.g. ``nf_resnet/stage1_block1/conv0``.
    param_name: parameter name inside the module, e.g. ``w``, ``gain``.

  Returns:
    True for ``w`` parameters.
  """
  del module_name
  return param_name in DECAYED_PARAM_NAMES


def is_clipped(module_name: str, param_name: str) -> bool:
  """Whether adaptive gradient clipping applies: everything but the final classifier."""
  del param_name
  return module_name.split("/")[-1] != CLASSIFIER_MODULE


def adaptive_grad_clip(clipping: float, eps: float) -> optax.GradientTransformation:
  """``optax.adaptive_grad_clip`` with stacked blocks clipped as the unrolled model would be.

  AGC (Brock et al., 2021, arXiv 2102.06171) clips each unit (a conv kernel's output
  channel, a linear layer's output unit, a whole vector or scalar) to ``clipping`` times
  its parameter norm. A stacked parameter (``NFResNet(stack_blocks=True)``, leading block
  axis) holds one layer per block, so the unit-wise norms are taken per block slice
  (``jax.vmap`` over the leading axis); taking them over the whole array would mix blocks.

  Args:
    clipping: the clipping threshold lambda (0.01 in the NFNet recipe).
    eps: lower bound of the parameter norm, so zero-initialized parameters can move.
  """
  unrolled = optax.adaptive_grad_clip(clipping, eps=eps)

  def clip_leaf(update: jax.Array, param: jax.Array) -> jax.Array:
    return unrolled.update(update, optax.EmptyState(), param)[0]

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("adaptive gradient clipping needs the parameters")

    def clip(path, update, param):
      module = getattr(path[0], "key", "")
      if nfresnet.is_stacked_module(str(module)):
        return jax.vmap(clip_leaf)(update, param)
      return clip_leaf(update, param)

    return jax.tree_util.tree_map_with_path(clip, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def param_mask(params: hk.Params, predicate) -> hk.Params:
  """A boolean pytree shaped like ``params``: ``predicate(module_name, param_name)``."""
  return hk.data_structures.map(lambda m, n, _: predicate(m, n), params)


class Schedule(NamedTuple):
  """Derived training-length values, computed from the config at run time."""

  total_steps: int
  warmup_steps: int
  peak_lr: float
  end_lr: float
  eval_every: int = 0  # Steps between periodic evaluations; 0: only at the end.


def total_steps(train: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """``train.num_steps`` if set, else ``ceil(num_epochs * examples / batch_size)``."""
  if train.num_steps is not None:
    steps = int(train.num_steps)
  else:
    steps = math.ceil(train.num_epochs * num_train_examples / train.batch_size)
  if steps <= 0:
    raise ConfigError(f"training length must be positive, got {steps} steps")
  return steps


def make_schedule(config: ml_collections.ConfigDict, num_train_examples: int) -> Schedule:
  """Derives total steps, warm-up steps and the peak learning rate.

  Args:
    config: the experiment config (``train`` and ``optimizer`` sections).
    num_train_examples: size of the training split.

  Returns:
    The Schedule; warm-up is ``optimizer.warmup_steps`` if set, else
    ``round(warmup_fraction * total_steps)`` if set, else
    ``round(warmup_epochs * examples / batch_size)``, capped at total steps; the
    evaluation interval is ``eval_interval``.
  """
  opt = config.optimizer
  steps = total_steps(config.train, num_train_examples)
  if opt.warmup_steps is not None:
    warmup = int(opt.warmup_steps)
  elif opt.get("warmup_fraction") is not None:
    warmup = round(opt.warmup_fraction * steps)
  else:
    warmup = round(opt.warmup_epochs * num_train_examples / config.train.batch_size)
  if warmup < 0:
    raise ConfigError(f"warm-up must be >= 0 steps, got {warmup}")
  peak = opt.base_lr * (config.train.batch_size / REFERENCE_BATCH_SIZE if opt.scale_by_batch else 1)
  return Schedule(
    steps,
    min(warmup, steps),
    float(peak),
    float(opt.end_lr),
    eval_interval(config, num_train_examples),
  )


def eval_interval(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """``train.eval_every`` steps, or ``round(eval_every_epochs * examples / batch_size)`` (>= 1)."""
  epochs = config.train.get("eval_every_epochs")
  if epochs is None:
    return int(config.train.eval_every)
  if epochs <= 0:
    raise ConfigError(f"train.eval_every_epochs must be positive, got {epochs}")
  return max(1, round(epochs * num_train_examples / config.train.batch_size))


def learning_rate_fn(schedule: Schedule) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak_lr``, then cosine decay to ``end_lr`` at ``total_steps``.

  A 0-step warm-up starts directly at the peak (no 0/0, unlike the reference).
  """
  decay_steps = max(1, schedule.total_steps - schedule.warmup_steps)
  alpha = schedule.end_lr / schedule.peak_lr if schedule.peak_lr else 0.0
  cosine = optax.cosine_decay_schedule(schedule.peak_lr, decay_steps, alpha=alpha)
  if schedule.warmup_steps == 0:
    return cosine
  warmup = optax.linear_schedule(0.0, schedule.peak_lr, schedule.warmup_steps)
  return optax.join_schedules([warmup, cosine], [schedule.warmup_steps])


def build_optimizer(
  opt: ml_collections.ConfigDict, lr: optax.Schedule
) -> optax.GradientTransformation:
  """The optax chain: [AGC] -> optimizer with weight decay masked by ``is_decayed``.

  SGD uses coupled weight decay (``grad + wd * param`` before momentum) and
  Nesterov momentum only when ``opt.nesterov`` is True. AdamW decays decoupled.

  Args:
    opt: the ``config.optimizer`` section.
    lr: learning-rate schedule.

  Returns:
    An ``optax.GradientTransformation`` expecting ``params`` in ``update``.
  """
  if opt.name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer name {opt.name!r}; allowed: {', '.join(OPTIMIZERS)}")
  decay_mask = lambda params: param_mask(params, is_decayed)
  parts: list[optax.GradientTransformation] = []
  if opt.agc_clip > 0:
    agc = adaptive_grad_clip(opt.agc_clip, opt.agc_eps)
    parts.append(optax.masked(agc, lambda params: param_mask(params, is_clipped)))
  if opt.name == "sgd":
    if opt.weight_decay:
      parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(lr, momentum=opt.momentum or None, nesterov=bool(opt.nesterov)))
  else:
    parts.append(
      optax.adamw(
        lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
      )
    )
  return optax.chain(*parts)


def global_norm(tree: Any) -> jax.Array:
  """L2 norm over every leaf of a pytree (float32)."""
  return optax.tree.norm(jax.tree.map(lambda x: x.astype("float32"), tree))
