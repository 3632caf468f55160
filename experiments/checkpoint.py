"""Checkpoints with orbax: save every N steps and at the end, keep K, resume from the latest.

Each checkpoint ``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (the
whole TrainState: params, model state, optimizer state, EMA, step, rng) and
``meta`` (JSON: the model identity and the step). The data position is the
step, so nothing else is needed to resume exactly. Orbax writes each
checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import haiku as hk
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiments import models, steps
from experiments.configs import ConfigError
from experiments.train_state import TrainState

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
UNREADABLE_DIR = "unreadable_checkpoints"


class CheckpointMismatchError(ConfigError):
  """The workdir holds checkpoints of a different model."""


class Checkpointer:
  """Saves and restores TrainStates under ``workdir/checkpoints``.

  Args:
    workdir: experiment directory.
    identity: ``models.model_identity(...)`` of the model being trained.
    keep: number of checkpoints to keep (the most recent ones).
  """

  def __init__(self, workdir: str | pathlib.Path, identity: Mapping[str, Any], keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
    self.identity = json.loads(json.dumps(dict(identity)))  # Normalized as JSON reads it back.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "meta")
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    return dict(
      self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    )

  def check_identity(self) -> None:
    """Raises CheckpointMismatchError if the newest readable checkpoint is another model."""
    for step in reversed(self.steps()):
      try:
        meta = self.read_meta(step)
      except Exception as error:  # noqa: BLE001 - a corrupt checkpoint: try the previous one.
        logging.warning("checkpoint %d has unreadable metadata (%s)", step, error)
        continue
      saved = {k: meta.get(k) for k in self.identity}
      if saved != self.identity:
        raise CheckpointMismatchError(
          f"{self.directory} holds checkpoints of model {describe(saved)}, not "
          f"{describe(self.identity)}; use another --workdir"
        )
      return

  def save(self, state: TrainState) -> None:
    """Saves ``state`` at its step (all processes must call this).

    The state is replicated, so its host copy is saved; this skips orbax's
    per-replica slicing of device arrays, which compiles a slice program per
    parameter shape (seconds on the first save). Restoring puts it back on the
    mesh with the shardings of ``restore_latest``'s ``abstract_state``.
    """
    state = steps.fetch(state)
    step = int(state.step)
    meta = dict(self.identity, step=step)
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> Any | None:
    """The newest checkpoint that restores, or None when the workdir has none.

    A checkpoint that fails to restore is skipped with a warning and the
    previous one is tried.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings.

    Raises:
      CheckpointMismatchError: checkpoints exist but none restores into
        ``abstract_state`` (e.g. another optimizer); nothing is overwritten.
    """
    saved = self.steps()
    unreadable = []
    for step in reversed(saved):
      try:
        restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
      except Exception as error:  # noqa: BLE001 - fall back to the previous checkpoint.
        logging.warning("checkpoint %d is unreadable, trying the previous one: %s", step, error)
        unreadable.append(step)
        continue
      self.set_aside(unreadable)
      return restored.state
    if saved:
      raise CheckpointMismatchError(
        f"no checkpoint in {self.directory} (steps {saved}) restores into this configuration; "
        "use another --workdir"
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
        shutil.move(str(self.directory / str(step)), destination)
        logging.warning("moved unreadable checkpoint %d to %s", step, destination)
    if steps:
      multihost_utils.sync_global_devices("nfresnet_set_aside_checkpoints")
      self.manager.reload()

  def close(self) -> None:
    self.manager.close()


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


def load_trained(workdir: str | pathlib.Path, use_ema: bool = False) -> TrainedModel:
  """Loads the config and the latest checkpoint of a training run.

  Args:
    workdir: the run's ``--workdir``.
    use_ema: return the EMA parameters (and the EMA of the model state, when the
      checkpoint has one) instead of the raw ones.

  Returns:
    The TrainedModel.

  Raises:
    FileNotFoundError: no config or no readable checkpoint in ``workdir``.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  checkpoint_dir = workdir.absolute() / CHECKPOINT_DIR
  if not checkpoint_dir.is_dir():  # Checked first: orbax would create the folder.
    raise FileNotFoundError(f"no readable checkpoint in {checkpoint_dir}")
  manager = ocp.CheckpointManager(checkpoint_dir, item_names=("state", "meta"))
  for step in reversed(sorted(manager.all_steps())):
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
      )
    except Exception as error:  # noqa: BLE001 - fall back to the previous checkpoint.
      logging.warning("checkpoint %d is unreadable, trying the previous one: %s", step, error)
      continue
    state, meta = restored.state, restored.meta
    params = state["ema_params"] if use_ema else state["params"]
    if params is None:
      raise ValueError(f"{workdir} was trained without EMA parameters")
    model_state = state["model_state"]
    if use_ema and state.get("ema_model_state") is not None:
      model_state = state["ema_model_state"]
    model_fn = models.make_model_fn(meta["model_name"], meta["model"])
    return TrainedModel(config, model_fn, params, model_state or {})
  raise FileNotFoundError(f"no readable checkpoint in {workdir / CHECKPOINT_DIR}")
