"""``train_and_evaluate(config, workdir)``: the training loop, importable from notebooks and tests.

The loop dispatches step ``t + 1`` before fetching the metrics of step ``t``
(so the host never stalls the device), checks every step's loss, gradient
norm and parameter norm for finiteness before anything is logged or saved
(``GUARDED_METRICS``), evaluates every
``eval_every`` steps and at the end, and checkpoints every
``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments import checkpoint, data, models, optim, steps
from experiments.configs import ConfigError
from experiments.logger import MetricsLogger
from experiments.train_state import TrainState, create_train_state, init_train_state

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

GUARDED_METRICS = ("loss", "grad_norm", "param_norm")
"""Checked every step before logging or saving. The loss and gradient are computed
from the parameters before the update, the parameter norm after it, so a state
is saved only if the parameters it holds are finite."""


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss, gradient norm or parameter norm."""


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls ``jax.distributed.initialize`` when the config or the environment asks.

  Asked by ``config.train.distributed`` or a ``JAX_COORDINATOR_ADDRESS``
  environment variable; ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are passed
  on when set (otherwise JAX detects the cluster, e.g. SLURM).
  """
  if not (config.train.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  if jax.distributed.is_initialized():
    return
  env_int = lambda name: int(os.environ[name]) if name in os.environ else None
  jax.distributed.initialize(
    num_processes=env_int("JAX_NUM_PROCESSES"), process_id=env_int("JAX_PROCESS_ID")
  )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Cheap checks that fail before any data is read or anything is compiled."""
  models.get_model_class(config.model_name)
  if config.data.name not in data.SOURCES:
    raise ConfigError(
      f"unknown dataset name {config.data.name!r}; allowed: {', '.join(data.SOURCES)}"
    )
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ConfigError(
      f"unknown optimizer name {config.optimizer.name!r}; allowed: {', '.join(optim.OPTIMIZERS)}"
    )
  if config.train.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(
      f"unknown compute_dtype {config.train.compute_dtype!r}; allowed: {', '.join(COMPUTE_DTYPES)}"
    )
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    size = config.train[field]
    if size <= 0 or size % devices:
      raise ConfigError(
        f"train.{field}={size} must be a positive multiple of the device count {devices}"
      )


class Trainer:
  """Builds the model, optimizer, steps and checkpointer from a config; runs the loop.

  ``train_and_evaluate`` is the entry point; tests use the Trainer to reach its
  pieces (``train_step``, ``eval_step``, ``checkpointer``, ``initial_state``).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    check_config(config)
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.train_source = data.load_source(config.data, "train")
    self.test_source = data.load_source(config.data, "test")
    num_classes = self.train_source.num_classes
    self.model = models.build_model(config, num_classes, steps.AXIS)
    # Initialization runs outside shard_map, where a cross-replica axis is unbound.
    self.init_model = models.build_model(config, num_classes)
    self.schedule = optim.make_schedule(config, data.num_examples(self.train_source))
    self.lr_fn = optim.learning_rate_fn(self.schedule)
    self.optimizer = optim.build_optimizer(config.optimizer, self.lr_fn)
    self.checkpointer = checkpoint.Checkpointer(
      self.workdir, models.model_identity(config, num_classes), config.train.keep_checkpoints
    )
    self.checkpointer.check_identity()  # Before anything in the workdir is written.
    self.mesh = steps.make_mesh()
    dtype = COMPUTE_DTYPES[config.train.compute_dtype]
    self.train_step = steps.make_train_step(
      steps.train_step_body(
        self.model,
        self.optimizer,
        self.lr_fn,
        label_smoothing=config.train.label_smoothing,
        compute_dtype=dtype,
        ema_decay=config.train.ema_decay,
      ),
      self.mesh,
    )
    self.eval_step = steps.make_eval_step(steps.eval_step_body(self.model, dtype), self.mesh)
    self.last_saved: int | None = None  # Step of the newest checkpoint (NaN-guard message).

  def initial_state(self) -> TrainState:
    """The latest restorable checkpoint, or a fresh state (replicated over the mesh)."""
    size = self.config.data.image_size or self.train_source.image_shape[0]
    sample = jnp.zeros((1, size, size, self.train_source.image_shape[2]), jnp.float32)
    args = (self.init_model, self.optimizer, self.config.train.seed, sample)
    use_ema = self.config.train.ema_decay > 0
    replicated = steps.replicated_sharding(self.mesh)
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(lambda: init_train_state(*args, use_ema=use_ema)),
    )
    restored = self.checkpointer.restore_latest(abstract)
    if restored is not None:
      return restored
    return create_train_state(*args, use_ema=use_ema, sharding=replicated)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Accuracy and loss over the whole test split (raw and EMA parameters)."""
    sums = None
    for batch in data.eval_batches(
      self.test_source,
      self.config.data,
      global_batch_size=self.config.train.eval_batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ):
      out = self.eval_step(state, steps.global_batch(batch, self.mesh))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = steps.fetch(sums)
    count = float(sums["count"])
    result = {"count": count, "accuracy": sums["correct"] / count, "loss": sums["loss"] / count}
    if "ema_correct" in sums:
      result.update(ema_accuracy=sums["ema_correct"] / count, ema_loss=sums["ema_loss"] / count)
    return {k: float(v) for k, v in result.items()}

  def run(self) -> tuple[TrainState, dict[str, Any]]:
    """Trains to ``schedule.total_steps`` (resuming if possible) and evaluates."""
    cfg = self.config.train
    total = self.schedule.total_steps
    state = self.initial_state()
    start = checkpoint.steps_of(state)
    logger = MetricsLogger(self.workdir, start, total, cfg.progress_bar)
    logger.write_config(self.config)
    logger.print_params(steps.fetch(state.params))
    if start:
      logger.note(f"resuming from the checkpoint of step {start} of {total}")
    batches = data.train_batches(
      self.train_source,
      self.config.data,
      global_batch_size=cfg.batch_size,
      seed=cfg.seed,
      start_step=start,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    self.last_saved = (self.checkpointer.steps() or [None])[-1]
    clock = {"time": time.perf_counter(), "step": start}
    train_metrics: dict[str, Any] = {}
    eval_metrics: dict[str, Any] = {}
    pending = None
    try:
      for step in range(start + 1, total + 1):
        state, metrics = self.train_step(state, steps.global_batch(next(batches), self.mesh))
        if pending is not None:
          train_metrics = self.finish_step(*pending, logger, clock)
        pending = (step, metrics)
        is_last = step == total
        evaluate = is_last or (cfg.eval_every > 0 and step % cfg.eval_every == 0)
        save = is_last or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)
        if evaluate or save:
          train_metrics = self.finish_step(*pending, logger, clock)
          pending = None
        if evaluate:
          eval_metrics = self.evaluate(state)
          logger.write(step, eval_metrics, kind="eval")
        if save:
          self.checkpointer.save(state)
          self.last_saved = step
        if evaluate or save:
          clock.update(time=time.perf_counter(), step=step)  # images/s excludes eval and saving.
      if start == total:
        eval_metrics = self.evaluate(state)
    finally:
      logger.close()
      self.checkpointer.close()
    summary = {f"train/{k}": v for k, v in train_metrics.items()}
    summary.update({f"eval/{k}": v for k, v in eval_metrics.items()})
    summary["step"] = total
    return state, summary

  def finish_step(
    self, step: int, metrics: Any, logger: MetricsLogger, clock: dict[str, float]
  ) -> dict[str, float]:
    """Fetches a step's metrics, stops on non-finite values, logs every ``log_every`` steps."""
    host = {k: float(v) for k, v in steps.fetch(metrics).items()}
    bad = [name for name in GUARDED_METRICS if not math.isfinite(host[name])]
    if bad:
      values = ", ".join(f"{name} {host[name]}" for name in GUARDED_METRICS)
      kept = f"checkpoint of step {self.last_saved} kept" if self.last_saved else "none saved"
      raise NonFiniteError(
        f"non-finite {' and '.join(bad)} at step {step} ({values}); training stopped ({kept})"
      )
    log_every = self.config.train.log_every
    if (log_every > 0 and step % log_every == 0) or step == self.schedule.total_steps:
      now = time.perf_counter()
      images = (step - clock["step"]) * self.config.train.batch_size
      host["images_per_s"] = images / max(now - clock["time"], 1e-9)
      clock.update(time=now, step=step)
      logger.write(step, host)
      logger.progress(step, host["loss"], host["images_per_s"])
    else:
      logger.progress(step)
    return host


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> tuple[TrainState, dict[str, Any]]:
  """Trains and evaluates the model the config describes; resumes from ``workdir``.

  Args:
    config: experiment config (``experiments/configs/*.py``).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events and
      ``config.json`` go. Existing checkpoints of the same model are resumed.

  Returns:
    The final TrainState (replicated over the mesh) and a flat dict of final
    metrics: ``train/*`` of the last step, ``eval/*`` of the final evaluation.

  Raises:
    ConfigError: invalid config, or checkpoints of another model in ``workdir``.
    data.DatasetError: missing or corrupt data.
    NonFiniteError: a non-finite loss or gradient norm (nothing bad is saved).
  """
  maybe_initialize_distributed(config)
  return Trainer(config, workdir).run()
