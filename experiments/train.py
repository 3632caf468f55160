"""``train_and_evaluate(config, workdir)``: the training loop, importable from notebooks and tests.

The loop dispatches step ``t + 1`` before fetching the metrics of step ``t``
(so the host never stalls the device), checks every step's loss, gradient
norm and parameter norm for finiteness before anything is logged or saved
(``GUARDED_METRICS``), evaluates every
``eval_every`` steps (or ``eval_every_epochs``) and at the end, and checkpoints every
``checkpoint_every`` steps, every ``checkpoint_every_minutes`` and at the end. Saves
are asynchronous (``experiments.checkpoint``): the next steps run while one is written.

SIGTERM and SIGINT stop the run at the next step boundary (``StopRequest``): the
state of that step is saved, the save waited for, and ``TrainingInterrupted`` raised;
rerunning the same command resumes from it exactly. A second signal interrupts at
once. With several processes, all stop at the same step: a multi-process run polls
JAX's preemption notice (``multihost_utils.reached_preemption_sync_point``, fed by
the SIGTERM handler that ``jax.distributed.initialize`` installs) at every step, and
every ``STOP_SYNC_EVERY`` steps gathers the signals the processes received (and process
0's checkpoint clock) with one tiny ``process_allgather``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from experiments import (
  builder,
  checkpoint,
  cli,
  data,
  models,
  paths,
  resume_check,
  shared_storage,
  steps,
  telemetry,
  workdir_lock,
)
from experiments.logger import MetricsLogger
from experiments.train_state import TrainState

GUARDED_METRICS = ("loss", "grad_norm", "param_norm")
"""Checked every step before logging or saving. The loss and gradient are computed
from the parameters before the update, the parameter norm after it, so a state
is saved only if the parameters it holds are finite."""


STOP_SYNC_EVERY = 10
"""Steps between the checks that share stop requests and the checkpoint clock across
processes (one ``process_allgather`` of two integers, about 1.5 ms on two CPU processes,
plus the wait for the step in flight). Single-process runs check every step for free."""

PREEMPTION_NOTICE = "a preemption notice"


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss, gradient norm or parameter norm."""


class TrainingInterrupted(cli.Interrupted):
  """Training stopped at a step boundary on request; the state of ``step`` is saved.

  Args:
    signal_name: what asked to stop (``SIGTERM``, ``SIGINT`` or ``PREEMPTION_NOTICE``).
    step: the step whose checkpoint was saved (and waited for).
  """

  def __init__(self, signal_name: str, step: int):
    super().__init__(signal_name)
    self.step = step

  def __str__(self) -> str:
    return f"interrupted by {self.signal} at step {self.step}: checkpoint saved"


class StopRequest:
  """Signal handlers that ask the training loop to stop at the next step boundary.

  The first signal only records its name (``signal_name``); the loop reads it. A
  second one raises ``cli.Interrupted`` at once, for a loop that no longer reaches
  step boundaries. ``request`` asks to stop without a signal (tests, notebooks).
  """

  def __init__(self):
    self.signal_name: str | None = None

  def request(self, name: str = "SIGTERM") -> None:
    self.signal_name = self.signal_name or name

  def handle(self, signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      raise cli.Interrupted(name)
    self.signal_name = name

  @contextlib.contextmanager
  def installed(self, signals: Sequence[signal.Signals]) -> Iterator[None]:
    """``handle`` is the handler of ``signals`` inside (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {signum: signal.signal(signum, self.handle) for signum in signals}
    try:
      yield
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def preemption_notices(step: int) -> bool:
  """Whether JAX's preemption notices can be polled: several processes and its sync manager.

  ``reached_preemption_sync_point`` returns False without ``jax.distributed`` and
  raises RuntimeError when the preemption service is off; ``step`` is the first
  step id given to it (every process must start from the same one).
  """
  if jax.process_count() == 1:
    return False
  try:
    multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:
    return False
  return True


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


class Trainer:
  """Builds the model, optimizer, steps and checkpointer from a config; runs the loop.

  ``train_and_evaluate`` is the entry point; tests use the Trainer to reach its
  pieces (``train_step``, ``eval_step``, ``checkpointer``, ``initial_state``).
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    allow_config_changes: bool = False,
  ):
    builder.check_config(config, jax.device_count())
    self.config = config
    self.workdir = paths.as_path(workdir, "--workdir")
    self.train_source = data.load_source(config.data, "train")
    self.test_source = data.load_source(config.data, "test")
    self.val_source = (
      data.load_source(config.data, "validation") if config.data.validation_examples else None
    )
    num_classes = self.train_source.num_classes
    builder.check_data_size(config, data.num_examples(self.train_source))
    self.experiment = builder.build(config, num_classes, data.num_examples(self.train_source))
    self.schedule = self.experiment.schedule
    self.train_step = self.experiment.train_step
    self.eval_step = self.experiment.eval_step
    self.mesh = self.experiment.mesh
    shared_storage.check_shared_workdir(self.workdir)
    self.lock = workdir_lock.acquire_for_run(self.workdir)  # Before orbax cleans the folder.
    try:
      self.checkpointer = checkpoint.Checkpointer(
        self.workdir, models.model_identity(config, num_classes), config.train.keep_checkpoints
      )
      self.checkpointer.check_identity()  # Before anything in the workdir is written.
      resuming = bool(self.checkpointer.steps())
      self.config_changes = (
        resume_check.check(self.workdir, config, allow_config_changes) if resuming else []
      )
    except BaseException:
      self.release()
      raise
    self.last_saved: int | None = None  # Step of the newest checkpoint (NaN-guard message).
    self.stop = StopRequest()
    self.clock: Callable[[], float] = time.monotonic  # Seconds; for checkpoint_every_minutes.
    self.telemetry = telemetry.Telemetry(config, self.workdir, self.experiment, self.image_shape())

  def release(self) -> None:
    """Releases the workdir lock (``run`` does at its end; call it if ``run`` is not called)."""
    if self.lock is not None:
      self.lock.release()
      self.lock = None

  def image_shape(self) -> tuple[int, int, int]:
    """Training input shape (H, W, C): ``data.image_size`` or the stored size."""
    stored = self.train_source.image_shape
    size = self.config.data.image_size or stored[0]
    return (size, size, stored[2])

  def initial_state(self) -> TrainState:
    """The latest restorable checkpoint, or a fresh state (replicated over the mesh)."""
    shape = self.image_shape()
    restored = self.checkpointer.restore_latest(self.experiment.abstract_state(shape))
    if restored is not None:
      return restored
    return self.experiment.init_state(shape)

  def evaluate(self, state: TrainState, source: data.Source | None = None) -> dict[str, float]:
    """Accuracy and loss over a whole split (default: test), raw and EMA parameters."""
    sums = None
    for batch in data.eval_batches(
      self.test_source if source is None else source,
      self.config.data,
      global_batch_size=self.experiment.eval_batch_size,
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
    """Trains to ``schedule.total_steps`` (resuming if possible) and evaluates.

    Raises:
      TrainingInterrupted: a stop was requested (SIGTERM, SIGINT, a preemption
        notice); the state of the step it names is saved.
    """
    cfg = self.config.train
    total = self.schedule.total_steps
    state = self.initial_state()
    start = checkpoint.steps_of(state)
    if self.lock is not None:
      self.lock.record_holder()
    logger = MetricsLogger(self.workdir, start, total, cfg.progress_bar)
    logger.write_config(self.config)
    logger.print_params(steps.fetch(state.params))
    if start:
      logger.note(f"resuming from the checkpoint of step {start} of {total}")
    if self.config_changes:
      logger.note("resuming with changed fields: " + "; ".join(self.config_changes))
    if start < total:
      logger.clear_done()
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
    self.preemption = preemption_notices(start)
    # JAX's preemption notifier keeps SIGTERM when it is there (it picks the step).
    signals = [signal.SIGINT] + ([] if self.preemption else [signal.SIGTERM])
    clock = {"time": time.perf_counter(), "step": start}
    last_save_time = self.clock()
    train_metrics: dict[str, Any] = {}
    eval_metrics: dict[str, Any] = {}
    val_metrics: dict[str, Any] = {}
    pending = None
    try:
      with self.stop.installed(signals):
        for step in range(start + 1, total + 1):
          self.telemetry.step(step, state)  # Starts or stops the profiler trace.
          state, metrics = self.train_step(state, steps.global_batch(next(batches), self.mesh))
          if pending is not None:
            train_metrics = self.finish_step(*pending, logger, clock)
          pending = (step, metrics)
          is_last = step == total
          stop, time_due = self.poll_stop(step, last_save_time)
          every = self.schedule.eval_every
          evaluate = is_last or (every > 0 and step % every == 0)
          save = is_last or stop is not None or time_due
          save = save or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)
          if evaluate or save:
            train_metrics = self.finish_step(*pending, logger, clock)
            pending = None
          if save:  # Written in the background, during the evaluation and the next steps.
            self.checkpointer.save(state, wait=False)
            self.last_saved = step
            last_save_time = self.clock()
          else:
            self.checkpointer.poll()  # The manifest of a finished save.
          if self.lock is not None:
            self.lock.renew()  # An object-store lease, once a minute; locally nothing.
          if evaluate:
            eval_metrics, val_metrics = self.evaluate_splits(state, step, is_last, logger)
          if evaluate or save:
            clock.update(time=time.perf_counter(), step=step)  # images/s excludes eval, saves.
          if stop is not None and not is_last:
            self.checkpointer.wait()
            raise TrainingInterrupted(stop, step)
      if start == total:
        eval_metrics = self.evaluate(state)
        val_metrics = self.evaluate(state, self.val_source) if self.val_source else {}
      self.checkpointer.wait()  # The run is complete only once its final save is.
      final = {f"eval/{k}": v for k, v in eval_metrics.items()}
      logger.write_done(total, {**final, **{f"val/{k}": v for k, v in val_metrics.items()}})
    finally:
      self.telemetry.close()
      logger.close()
      try:
        self.checkpointer.close()
      finally:
        self.release()
    summary = {f"train/{k}": v for k, v in train_metrics.items()}
    summary.update({f"eval/{k}": v for k, v in eval_metrics.items()})
    summary.update({f"val/{k}": v for k, v in val_metrics.items()})
    summary["step"] = total
    return state, summary

  def poll_stop(self, step: int, last_save_time: float) -> tuple[str | None, bool]:
    """``(what asked to stop or None, whether a timed save is due)`` after ``step``.

    Every process returns the same: one process alone decides from its own flag
    and clock; several follow JAX's preemption notice (every step) and, every
    ``STOP_SYNC_EVERY`` steps, stop if any process received a signal and save if
    process 0's clock says a timed save is due (between those steps, neither).
    """
    minutes = self.config.train.checkpoint_every_minutes
    time_due = minutes > 0 and self.clock() - last_save_time >= 60.0 * minutes
    if jax.process_count() == 1:
      return self.stop.signal_name, time_due
    if self.preemption and multihost_utils.reached_preemption_sync_point(step):
      return PREEMPTION_NOTICE, time_due
    if step % STOP_SYNC_EVERY:
      return None, False
    name = self.stop.signal_name
    local = np.array([signal.Signals[name].value if name else 0, time_due], np.int32)
    gathered = multihost_utils.process_allgather(local)  # (processes, 2), the same everywhere.
    code = int(gathered[:, 0].max())
    return (signal.Signals(code).name if code else None), bool(gathered[0, 1])

  def evaluate_splits(
    self, state: TrainState, step: int, is_last: bool, logger: MetricsLogger
  ) -> tuple[dict[str, float], dict[str, float]]:
    """The evaluations of ``step``: ``(test, validation)`` metrics, each ``{}`` when skipped.

    With a validation split the periodic evaluations (``eval_every``) use it (rows of
    kind "val") and the test split is evaluated at the last step only (kind "eval"), so
    choices made on validation accuracy never look at the test set. Without one, every
    evaluation is of the test split.
    """
    test, val = {}, {}
    if self.val_source is not None:
      val = self.evaluate(state, self.val_source)
      logger.write(step, val, kind="val")
    if is_last or self.val_source is None:
      test = self.evaluate(state)
      logger.write(step, test, kind="eval")
    return test, val

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
      seconds, window = max(now - clock["time"], 1e-9), step - clock["step"]
      host["images_per_s"] = window * self.config.train.batch_size / seconds
      host.update(self.telemetry.fields(window, seconds))  # Step time, MFU, memory.
      clock.update(time=now, step=step)
      logger.write(step, host)
      logger.progress(step, host["loss"], host["images_per_s"])
    else:
      logger.progress(step)
    return host


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  allow_config_changes: bool = False,
) -> tuple[TrainState, dict[str, Any]]:
  """Trains and evaluates the model the config describes; resumes from ``workdir``.

  Args:
    config: experiment config (``experiments/configs/*.py``).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events and
      ``config.json`` go: a local path or a URL (``experiments.paths``). Existing
      checkpoints of the same model are resumed, under the same config.
    allow_config_changes: resume even if fields other than
      ``resume_check.RESUMABLE`` differ from the workdir's ``config.json``.

  Returns:
    The final TrainState (replicated over the mesh) and a flat dict of final
    metrics: ``train/*`` of the last step, ``eval/*`` of the final evaluation.

  Raises:
    ConfigError: invalid config, checkpoints of another model in ``workdir``, a
      changed config (see ``allow_config_changes``), or another run holding ``workdir``.
    data.DatasetError: missing or corrupt data.
    NonFiniteError: a non-finite loss or gradient norm (nothing bad is saved).
    TrainingInterrupted: SIGTERM, SIGINT or a preemption notice stopped the run
      at a step boundary; that step's checkpoint is saved, so rerunning resumes.
    checkpoint.CheckpointWriteError: a checkpoint could not be written.
  """
  maybe_initialize_distributed(config)
  telemetry.enable_compilation_cache(config)  # Before anything is compiled.
  return Trainer(config, workdir, allow_config_changes).run()
