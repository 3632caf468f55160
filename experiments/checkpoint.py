"""Checkpoints with orbax: save every N steps and at the end, keep K, resume from the latest.

Each checkpoint ``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (the
whole TrainState: params, model state, optimizer state, EMA, step, rng) and
``meta`` (JSON: the model identity and the step). The data position is the
step, so nothing else is needed to resume exactly. Orbax writes each
checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact; a new ``Checkpointer``
removes such leftover temporary folders, and a save that fails (disk full, I/O
error) removes its own and raises ``CheckpointWriteError``.

Saves are asynchronous: ``save`` copies the state to host memory, starts
orbax's write and returns, so training goes on while the files are written;
``wait`` blocks until the write is complete (``save`` waits for the previous
one first, ``poll`` finishes a write that is already done, ``close`` waits
too). A failure that surfaces while waiting is reported like one during the
save itself (``CheckpointWriteError``, the partial files removed).

Once a save is complete (in ``wait``), process 0 writes
``<step>/sha256_manifest.json``: the SHA-256 digest of every other file of the
checkpoint (orbax ignores the extra file and deletes it with the step).
Restoring verifies it first; checkpoints without one (older runs, or a process
killed between the end of a save and the next wait or poll) are restored
unverified. A checkpoint that fails verification, whose metadata cannot be
read, or that orbax cannot restore is unreadable: one warning line (its path
and the reason) and the previous one is tried. A resuming run moves unreadable
checkpoints to ``WORKDIR/unreadable_checkpoints/`` (never deletes them);
``load_trained`` only skips them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import haiku as hk
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiments import models, paths, steps
from experiments.checkpoint_manifest import verify_manifest, write_manifest
from experiments.configs import ConfigError
from experiments.orbax_errors import (
  CheckpointWriteError,
  quiet_orbax,
  short_reason,
  wait_for_orbax_threads,
  write_error_cause,
)
from experiments.train_state import TrainState

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
UNREADABLE_DIR = "unreadable_checkpoints"
TMP_DIR_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's <step>.orbax-checkpoint-tmp[-<time>] folders.
SAVE_THREADS_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class CheckpointMismatchError(ConfigError):
  """The workdir holds checkpoints of a different model."""


class CheckpointReadError(FileNotFoundError):
  """A workdir has checkpoints but none is readable (corrupt, truncated, unverifiable)."""


class _Manager(ocp.CheckpointManager):
  """Orbax's manager without its own polling of JAX's preemption sync point.

  Orbax asks ``multihost_utils.reached_preemption_sync_point(step)`` when a save
  starts and again when an asynchronous save is finalized, from its background
  thread and with that save's step. JAX sets the sync point to one past the largest
  step the processes last reported, each process reporting its latest call; a late
  call with an older step moves a process's report back, the processes can agree on
  a step one of them has already passed, and the run hangs in collectives the
  others never enter. The trainer polls the sync point once per step
  (``train.Trainer.poll_stop``) and saves with ``force=True``, so orbax's answer
  is never needed.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:
  """Saves and restores TrainStates under ``workdir/checkpoints``.

  Args:
    workdir: experiment directory: a local path or a URL (``paths.as_path``).
    identity: ``models.model_identity(...)`` of the model being trained.
    keep: number of checkpoints to keep (the most recent ones).
  """

  def __init__(self, workdir: str | os.PathLike, identity: Mapping[str, Any], keep: int = 3):
    self.directory = paths.absolute(paths.as_path(workdir, "--workdir")) / CHECKPOINT_DIR
    self.identity = json.loads(json.dumps(dict(identity)))  # Normalized as JSON reads it back.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=True,  # Training goes on while a save is written.
      create=True,
      cleanup_tmp_directories=True,  # Unfinished saves of a killed process.
    )
    with quiet_orbax():
      self.manager = _Manager(self.directory, options=options, item_names=("state", "meta"))
      # Orbax removes the leftovers in a background thread that its first save
      # waits for; wait now so that the folder is clean once this returns.
      wait_for_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
      if wait_for_cleanup is not None:
        wait_for_cleanup()
    self._unreadable: dict[int, str] = {}  # Step -> reason (warned once).
    self._verified: set[int] = set()
    self._pending: _PendingSave | None = None  # The save being written, if any.

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The ``meta`` item of checkpoint ``step`` (raises if it cannot be read)."""
    with quiet_orbax():
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    return dict(meta)

  def check_identity(self) -> None:
    """Raises CheckpointMismatchError if the newest readable checkpoint is another model.

    Checkpoints that fail verification or whose metadata cannot be read are
    skipped with one warning each (``restore_latest`` skips them too, and never
    restores a checkpoint without checking its identity). Nothing is written.
    """
    for step in reversed(self.steps()):
      restored = self._read(step, meta=ocp.args.JsonRestore())
      if restored is not None:
        self._check_meta(restored.meta)
        return

  def save(self, state: TrainState, wait: bool = True) -> None:
    """Saves ``state`` at its step (all processes must call this).

    Waits for the previous save first (``wait``). The state is replicated, so a
    host copy of it is saved; this skips orbax's per-replica slicing of device
    arrays, which compiles a slice program per parameter shape (seconds on the
    first save), and leaves the device buffers free for the next step while the
    files are written. Restoring puts it back on the mesh with the shardings of
    ``restore_latest``'s ``abstract_state``.

    Args:
      state: the TrainState to save.
      wait: block until the checkpoint and its manifest are written; with
        False, the write goes on in the background until ``wait``, ``poll``,
        the next ``save`` or ``close`` finds it complete.

    Raises:
      CheckpointWriteError: this checkpoint or the previous one could not be
        written (e.g. disk full); its partial files are removed and earlier
        checkpoints are kept.
    """
    self.wait()
    host = jax.tree.map(np.array, steps.fetch(state))  # A copy: the step donates its input.
    step = int(host.step)
    meta = dict(self.identity, step=step)
    existed = (self.directory / str(step)).exists()  # Orbax refuses to overwrite it: keep it.
    quiet = contextlib.ExitStack()  # Open until the write is waited for.
    quiet.enter_context(quiet_orbax())
    self._pending = _PendingSave(step, existed, quiet)
    try:
      with quiet:  # Closed (and the pending save failed) only if the save raises.
        self.manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)),
          force=True,
        )
        self._pending.quiet = quiet.pop_all()
    except Exception as error:
      self._pending = None
      self._raise_write_error(step, existed, error)
    if wait:
      self.wait()

  @property
  def pending_step(self) -> int | None:
    """The step of the save being written in the background, or None."""
    return None if self._pending is None else self._pending.step

  def wait(self) -> None:
    """Blocks until the pending save (if any) is written, then writes its manifest.

    Raises:
      CheckpointWriteError: the checkpoint could not be written; its partial
        files are removed and earlier checkpoints are kept.
    """
    pending, self._pending = self._pending, None
    if pending is None:
      return
    step_dir = self.directory / str(pending.step)
    try:
      with pending.quiet:
        self.manager.wait_until_finished()
      if jax.process_index() == 0:
        write_manifest(step_dir)
    except Exception as error:
      self._raise_write_error(pending.step, pending.existed, error)
    self._verified.add(pending.step)
    self._unreadable.pop(pending.step, None)

  def poll(self) -> None:
    """Finishes (manifest included) a background save that is already complete; never blocks.

    Raises:
      CheckpointWriteError: as ``wait``.
    """
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def _raise_write_error(self, step: int, existed: bool, error: Exception) -> None:
    """Removes what the failed save of ``step`` left, then raises its CheckpointWriteError."""
    self._discard_partial_save(step, remove_step_dir=not existed)
    cause = write_error_cause(error)
    if cause is None:
      raise error
    code, reason = cause
    raise CheckpointWriteError(
      f"cannot save checkpoint {step} to {self.directory}: {reason}",
      code,
      os.strerror(code) if code is not None else None,
    ) from error

  def restore_latest(self, abstract_state: Any) -> Any | None:
    """The newest checkpoint that verifies, restores and is this model, or None if none exist.

    An unreadable checkpoint (see the module docstring) is skipped with one
    warning and the previous one is tried; once one restores, the skipped ones
    are set aside. The identity is checked on the checkpoint restored.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings.

    Raises:
      CheckpointMismatchError: the restored checkpoint is of another model, or
        checkpoints exist but none restores into ``abstract_state`` (e.g.
        another optimizer, or all corrupt); nothing is overwritten.
    """
    saved = self.steps()
    unreadable = []
    for step in reversed(saved):
      restored = self._read(
        step, state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
      )
      if restored is None:
        unreadable.append(step)
        continue
      self._check_meta(restored.meta)
      self.set_aside(unreadable)
      return restored.state
    if saved:
      raise CheckpointMismatchError(
        f"no checkpoint in {self.directory} (steps {saved}) restores into this configuration "
        f"(newest: {self._unreadable.get(saved[-1], 'unreadable')}); use another --workdir"
      )
    return None

  def set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints to ``workdir/unreadable_checkpoints/`` (kept, not deleted).

    The resumed run saves those steps again, which orbax refuses while they exist.
    """
    if steps and jax.process_index() == 0:
      target = self.directory.parent / UNREADABLE_DIR
      target.mkdir(exist_ok=True)
      for step in steps:
        destination = target / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        paths.move(self.directory / str(step), destination)
        log.info("moved unreadable checkpoint %d to %s", step, destination)
    if steps:
      multihost_utils.sync_global_devices("nfresnet_set_aside_checkpoints")
      self.manager.reload()
      for step in steps:
        self._verified.discard(step)

  def close(self) -> None:
    """Waits for the pending save (``wait``: it may raise), then closes the manager."""
    try:
      self.wait()
    finally:
      with quiet_orbax():
        self.manager.close()

  def _read(self, step: int, **items: Any) -> Any | None:
    """The verified, restored ``items`` of ``step``, or None (one warning) if unreadable."""
    if step in self._unreadable:
      return None
    step_dir = self.directory / str(step)
    reason = None if step in self._verified else verify_manifest(step_dir)
    restored = None
    if reason is None:
      self._verified.add(step)
      restored, reason = restore_items(self.manager, step, items)
    if reason is None and "meta" in items and not isinstance(restored.meta, Mapping):
      reason = f"{restored.meta!r:.40} in meta is not a JSON object"
    if reason is not None:
      self._unreadable[step] = reason
      warn_unreadable(step, step_dir, reason)
      return None
    return restored

  def _check_meta(self, meta: Mapping[str, Any]) -> None:
    saved = {k: meta.get(k) for k in self.identity}
    if saved != self.identity:
      raise CheckpointMismatchError(
        f"{self.directory} holds checkpoints of model {describe(saved)}, not "
        f"{describe(self.identity)}; use another --workdir"
      )

  def _discard_partial_save(self, step: int, remove_step_dir: bool) -> None:
    """Removes what a failed save of ``step`` left (process 0), keeping other checkpoints.

    The other writes of the failed save may still be running in orbax's
    threads (they could recreate the folder); they are waited for first.
    """
    with quiet_orbax(replay=False):  # Their errors repeat the one being raised.
      wait_for_orbax_threads(SAVE_THREADS_TIMEOUT_S)
    if jax.process_index() == 0:
      for _ in range(3):  # Writes already queued in TensorStore may land late.
        partial = list(self.directory.glob(f"{step}{TMP_DIR_SUFFIX}*"))
        if remove_step_dir and (self.directory / str(step)).exists():
          partial.append(self.directory / str(step))
        if not partial:
          break
        for path in partial:
          if path.is_dir():
            paths.remove_tree(path)
          else:
            path.unlink(missing_ok=True)
        time.sleep(0.05)
    with contextlib.suppress(Exception), quiet_orbax(replay=False):
      self.manager.reload()
    self._verified.discard(step)


@dataclasses.dataclass
class _PendingSave:
  """A save still being written: its step, whether the step folder existed, its quiet block."""

  step: int
  existed: bool
  quiet: contextlib.ExitStack


def restore_items(
  manager: ocp.CheckpointManager, step: int, items: Mapping[str, Any]
) -> tuple[Any | None, str | None]:
  """Restores ``items`` (name -> orbax restore args) of ``step``.

  Returns:
    ``(restored, None)``, or ``(None, reason)`` when orbax or TensorStore fails.
  """
  try:
    with quiet_orbax():
      return manager.restore(step, args=ocp.args.Composite(**items)), None
  except Exception as error:  # noqa: BLE001 - orbax and TensorStore raise many types.
    return None, short_reason(error)


def warn_unreadable(step: int, step_dir: paths.Path, reason: str) -> None:
  log.warning(
    "checkpoint %d is unreadable, trying the previous one: %s: %s", step, step_dir, reason
  )


def steps_of(state: TrainState) -> int:
  return int(jax.device_get(state.step.addressable_shards[0].data))


def describe(identity: Mapping[str, Any]) -> str:
  kwargs = identity.get("model") or {}
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  return f"{identity.get('model_name')}({args})"


class TrainedModel(NamedTuple):
  """A trained model loaded from a workdir.

  Attributes:
    config: the experiment config the run used.
    model_fn: ``model_fn(x, is_training) -> logits``; builds the model, so call
      it inside ``hk.transform_with_state`` (or ``hk.transform`` for NF models).
    params: trained parameters (float32, host arrays).
    state: Haiku model state (BN statistics; empty for NF models).
  """

  config: ml_collections.ConfigDict
  model_fn: models.ModelFn
  params: hk.Params
  state: hk.State


def load_trained(workdir: str | os.PathLike, use_ema: bool = False) -> TrainedModel:
  """Loads the config and the latest readable checkpoint of a training run.

  Checkpoints that fail their manifest or do not restore are skipped (one
  warning each, once an older one loads) and left in place.

  Args:
    workdir: the run's ``--workdir`` (a local path or a URL).
    use_ema: return the EMA parameters (and the EMA of the model state, when the
      checkpoint has one) instead of the raw ones.

  Returns:
    The TrainedModel.

  Raises:
    FileNotFoundError: no config or no checkpoint in ``workdir``.
    CheckpointReadError: checkpoints exist but none is readable (a
      FileNotFoundError whose one-line message names the newest one and why).
  """
  workdir = paths.as_path(workdir, "workdir")
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  checkpoint_dir = paths.absolute(workdir) / CHECKPOINT_DIR
  if not checkpoint_dir.is_dir():  # Checked first: orbax would create the folder.
    raise FileNotFoundError(f"no readable checkpoint in {checkpoint_dir}")
  with quiet_orbax():
    manager = ocp.CheckpointManager(checkpoint_dir, item_names=("state", "meta"))
  unreadable: list[tuple[int, str]] = []
  for step in reversed(sorted(manager.all_steps())):
    step_dir = checkpoint_dir / str(step)
    reason = verify_manifest(step_dir)
    if reason is None:
      items = dict(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
      restored, reason = restore_items(manager, step, items)
    if reason is None and not (
      isinstance(restored.meta, Mapping) and {"model_name", "model"} <= set(restored.meta)
    ):
      reason = "meta lacks the model name and arguments"
    if reason is not None:
      unreadable.append((step, f"{step_dir}: {reason}"))
      continue
    for bad_step, bad_reason in unreadable:
      log.warning("checkpoint %d is unreadable, skipped: %s", bad_step, bad_reason)
    state, meta = restored.state, restored.meta
    params = state["ema_params"] if use_ema else state["params"]
    if params is None:
      raise ValueError(f"{workdir} was trained without EMA parameters")
    model_state = state["model_state"]
    if use_ema and state.get("ema_model_state") is not None:
      model_state = state["ema_model_state"]
    model_fn = models.make_model_fn(meta["model_name"], meta["model"])
    return TrainedModel(config, model_fn, params, model_state or {})
  if not unreadable:
    raise FileNotFoundError(f"no readable checkpoint in {checkpoint_dir}")
  older = f" (and {len(unreadable) - 1} older unreadable ones)" if len(unreadable) > 1 else ""
  raise CheckpointReadError(
    f"no readable checkpoint in {checkpoint_dir}: checkpoint {unreadable[0][0]} at "
    f"{unreadable[0][1]}{older}"
  )
