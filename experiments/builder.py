"""The one builder: an experiment config -> model, schedule, optimizer and train/eval steps.

``build(config, num_classes, num_train_examples)`` is the only place that
constructs the optimizer (``optim.build_optimizer``) and the jitted steps
(``steps.make_train_step`` / ``steps.make_eval_step``). The trainer, the tests,
the benchmarks and the notebooks all go through it, so they run the same program::

  from experiments import builder
  from experiments.configs import quickstart

  experiment = builder.build(quickstart.get_config("smoke"), num_classes=10,
                             num_train_examples=64)
  state = experiment.init_state(image_shape=(16, 16, 1))
  state, metrics = experiment.train_step(state, experiment.shard_batch(batch))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

import nfresnet
from experiments import models, optim, schema, steps
from experiments.configs import ConfigError
from experiments.train_state import TrainState, create_train_state, init_train_state

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
"""``train.compute_dtype`` values besides "auto" (parameters stay float32 either way)."""
AUTO_BFLOAT16_PLATFORMS = ("gpu", "tpu")
"""Where ``compute_dtype="auto"`` is bfloat16: the platforms with bf16 matrix units."""

ModelWrapper = Callable[[models.ModelFn], models.ModelFn]


def check_config(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Cheap checks that fail before any data is read or anything is compiled.

  Every field against its declared type and range (``experiments.schema.validate``), then
  the constraints between fields and the machine: ``device_count`` devices are available,
  and the batch is split over those the mesh uses (``used_device_count``).

  Raises:
    ConfigError: a field whose value is not allowed (named with the value and what is
      allowed), a ``train.num_devices`` the machine cannot give, a training batch size
      that is not a multiple of the devices used, or ``train.grad_accum_steps`` that does
      not divide the per-device batch.
  """
  schema.validate(config)
  device_count = used_device_count(config, device_count)
  size = config.train.batch_size
  if size % device_count:
    raise ConfigError(
      f"train.batch_size={size} is not allowed: a multiple of the device count {device_count}"
    )
  accum = grad_accum_steps(config)
  per_device = size // device_count
  if per_device % accum:
    devices = f"{device_count} device{'s' if device_count != 1 else ''}"
    raise ConfigError(
      f"train.grad_accum_steps={accum} is not allowed: a divisor of the per-device batch "
      f"{per_device} (train.batch_size={size} over {devices})"
    )


def used_device_count(config: ml_collections.ConfigDict, device_count: int) -> int:
  """How many of the ``device_count`` devices the data mesh uses (``train.num_devices``).

  Raises:
    ConfigError: more devices than ``device_count``, or a count that does not divide by
      the number of processes (each contributes an equal share of its local devices).
  """
  wanted = config.train.get("num_devices", 0)  # 0 also for configs older than the field.
  if wanted > device_count:
    available = "the 1 device" if device_count == 1 else f"the {device_count} devices"
    raise ConfigError(
      f"train.num_devices={wanted} is not allowed: at most {available} available (0: all of them)"
    )
  processes = jax.process_count()
  if wanted % processes:
    raise ConfigError(
      f"train.num_devices={wanted} is not allowed: a multiple of the process count {processes}"
    )
  return wanted or device_count


def mesh_devices(
  config: ml_collections.ConfigDict, devices: Sequence[jax.Device]
) -> list[jax.Device]:
  """The devices of the data mesh: all of ``devices``, or the first ``train.num_devices``.

  With several processes each one contributes the first ``num_devices / process_count``
  of its own devices in ``devices``, process by process, so every process still feeds its
  share of each batch to devices it owns.
  """
  used = used_device_count(config, len(devices))
  if used == len(devices):
    return list(devices)
  per_process = used // jax.process_count()
  chosen = []
  for process in sorted({d.process_index for d in devices}):
    chosen += [d for d in devices if d.process_index == process][:per_process]
  return chosen


def resolve_compute_dtype(name: str, platform: str | None = None) -> str:
  """``train.compute_dtype`` as a dtype name: "auto" is bfloat16 on GPU and TPU, else float32.

  Args:
    name: "float32", "bfloat16" or "auto".
    platform: the platform the steps run on (default: ``jax.default_backend()``).
  """
  if name != "auto":
    return name
  platform = jax.default_backend() if platform is None else platform
  return "bfloat16" if platform in AUTO_BFLOAT16_PLATFORMS else "float32"


def grad_accum_steps(config: ml_collections.ConfigDict) -> int:
  """``train.grad_accum_steps`` (1 for configs written before the field existed)."""
  return config.train.get("grad_accum_steps", 1)


def check_data_size(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  """The training batch fits the training split (else an epoch would have no step)."""
  if config.train.batch_size > num_train_examples:
    raise ConfigError(
      f"train.batch_size={config.train.batch_size} is not allowed: at most the "
      f"{num_train_examples} training examples of {config.data.name}"
    )


def padded_eval_batch_size(config: ml_collections.ConfigDict, device_count: int) -> int:
  """``train.eval_batch_size`` rounded up to a multiple of ``device_count``.

  The evaluation batches are padded to this size and the padding is masked out, so
  any device count evaluates every example exactly once (1000 on 16 devices: 1008).
  """
  return -(-config.train.eval_batch_size // device_count) * device_count


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a config builds, ready to train and evaluate.

  Attributes:
    config: the experiment config it was built from.
    num_classes: classifier outputs.
    model: the transformed model used inside the steps (cross-replica BN axis bound).
    init_model: the same model for initialization, outside ``shard_map``.
    schedule: derived training length, warm-up and peak learning rate.
    lr_fn: the learning-rate schedule.
    optimizer: the optax chain.
    mesh: the 1-D ``data`` mesh the steps run on.
    eval_batch_size: the global evaluation batch (``padded_eval_batch_size``).
    train_step: ``(state, batch) -> (state, metrics)``, jitted, state donated.
    eval_step: ``(state, batch) -> global sums``, jitted.
  """

  config: ml_collections.ConfigDict
  num_classes: int
  model: hk.TransformedWithState
  init_model: hk.TransformedWithState
  schedule: optim.Schedule
  lr_fn: optax.Schedule
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  eval_batch_size: int
  train_step: Callable[[TrainState, steps.Batch], tuple[TrainState, steps.Metrics]]
  eval_step: Callable[[TrainState, steps.Batch], steps.Metrics]

  @property
  def use_ema(self) -> bool:
    return self.config.train.ema_decay > 0

  @property
  def stacked(self) -> bool:
    """``model.stack_blocks``: the state starts from the unrolled model's initialization."""
    return bool(self.config.model.get("stack_blocks", False))

  def _init_args(self, image_shape: Sequence[int]) -> dict[str, Any]:
    return dict(
      model=self.init_model,
      optimizer=self.optimizer,
      seed=self.config.train.seed,
      sample_image=jnp.zeros((1, *image_shape), jnp.float32),
      use_ema=self.use_ema,
      convert_params=nfresnet.stack_params if self.stacked else None,
    )

  def init_state(self, image_shape: Sequence[int]) -> TrainState:
    """The step-0 state for images of ``image_shape`` (H, W, C), replicated over the mesh.

    A stacked model (``stack_blocks=True``) starts from ``nfresnet.stack_params`` of the
    unrolled model's initialization, so it trains exactly as the unrolled model does.
    """
    sharding = steps.replicated_sharding(self.mesh)
    return create_train_state(**self._init_args(image_shape), sharding=sharding)

  def abstract_state(self, image_shape: Sequence[int]) -> TrainState:
    """Shapes, dtypes and shardings of ``init_state`` (nothing is computed)."""
    replicated = steps.replicated_sharding(self.mesh)
    args = self._init_args(image_shape)
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(lambda: init_train_state(**args)),
    )

  def shard_batch(self, batch: dict[str, Any]) -> steps.Batch:
    """Global arrays sharded over the mesh from this process's share of a batch."""
    return steps.global_batch(batch, self.mesh)


def build(
  config: ml_collections.ConfigDict,
  num_classes: int,
  num_train_examples: int,
  *,
  devices: Sequence[jax.Device] | None = None,
  model_wrapper: ModelWrapper | None = None,
) -> Experiment:
  """Builds the model, schedule, optimizer and sharded train/eval steps of ``config``.

  Args:
    config: an experiment config (``experiments/configs/*.py``), overrides applied.
    num_classes: classifier outputs (the dataset's).
    num_train_examples: size of the training split (epochs -> steps).
    devices: the devices to build the ``data`` mesh from (default: all of them); the mesh
      uses the first ``train.num_devices`` of them (``mesh_devices``).
    model_wrapper: optional ``model_fn -> model_fn`` applied inside the transform,
      e.g. to run the model under ``nfresnet.frozen()`` (benchmarks).

  Returns:
    The Experiment.

  Raises:
    ConfigError: invalid config (see ``check_config``).
  """
  available = list(jax.devices() if devices is None else devices)
  check_config(config, len(available))
  devices = mesh_devices(config, available)
  wrap = model_wrapper or (lambda fn: fn)
  model = hk.transform_with_state(wrap(models.model_fn(config, num_classes, steps.AXIS)))
  # Initialization runs outside shard_map, where a cross-replica axis is unbound; a stacked
  # model initializes as the unrolled one (``Experiment.init_state`` stacks the result).
  init_config = config
  if config.model.get("stack_blocks", False):
    init_config = ml_collections.ConfigDict(config.to_dict())
    init_config.model.stack_blocks = False
  init_model = hk.transform_with_state(wrap(models.model_fn(init_config, num_classes)))
  schedule = optim.make_schedule(config, num_train_examples)
  lr_fn = optim.learning_rate_fn(schedule)
  optimizer = optim.build_optimizer(config.optimizer, lr_fn)
  mesh = steps.make_mesh(devices)
  dtype = COMPUTE_DTYPES[resolve_compute_dtype(config.train.compute_dtype, devices[0].platform)]
  train_body = steps.train_step_body(
    model,
    optimizer,
    lr_fn,
    label_smoothing=config.train.label_smoothing,
    compute_dtype=dtype,
    ema_decay=config.train.ema_decay,
    ema_warmup=config.train.ema_warmup,
    grad_accum_steps=grad_accum_steps(config),
  )
  return Experiment(
    config=config,
    num_classes=num_classes,
    model=model,
    init_model=init_model,
    schedule=schedule,
    lr_fn=lr_fn,
    optimizer=optimizer,
    mesh=mesh,
    eval_batch_size=padded_eval_batch_size(config, len(devices)),
    train_step=steps.make_train_step(train_body, mesh),
    eval_step=steps.make_eval_step(steps.eval_step_body(model, dtype), mesh),
  )
