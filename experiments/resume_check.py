"""Resuming under the config a run started with: changed fields are refused unless allowed.

A rerun on a workdir with checkpoints resumes it. If the config differs from the
workdir's ``config.json`` (another learning rate, seed, augmentation...), the
resumed run would silently continue under the new values and match neither
config, so ``check`` refuses it with the list of changed fields. ``allow=True``
(``python -m experiments.main --allow_config_changes``) resumes anyway and prints
that list.

``RESUMABLE`` fields may change freely: how long the run is (its schedule is
derived from the total, so the learning rate after the resume point follows the
new length), how often it logs, evaluates and saves, and where and how it runs
(data location, input workers, devices, profiling, memory options that do not
change the numbers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from experiments import paths
from experiments.configs import ConfigError, base_config

CONFIG_FILE = "config.json"

RESUMABLE = frozenset(
  {
    "train.num_steps",
    "train.num_epochs",
    "train.eval_every",
    "train.eval_every_epochs",
    "train.eval_batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "train.progress_bar",
    "train.distributed",
    "train.profile_steps",
    "train.compilation_cache_dir",
    "train.peak_flops_per_device",
    "train.num_devices",
    "data.data_dir",
    "data.worker_processes",
    "model.remat",
  }
)
"""Fields that may differ between a run and its resumption (``docs/training.md``)."""

_UNSET = object()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as ``config.json`` stores it (tuples as lists, placeholders as null)."""
  return json.loads(config.to_json_best_effort())


def changed_fields(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """``"key: old -> new"`` for each field that differs and is not ``RESUMABLE``.

  A field missing from ``saved`` (the run predates it) counts as unchanged when the
  new value is the base config's default, or None/False/0/"" for fields the base
  config lacks. A field missing from the new config is ignored.
  """
  old, new = flatten(saved), flatten(as_json(config))
  defaults = flatten(as_json(base_config()))
  changes = []
  for key in sorted(new):
    if key in RESUMABLE:
      continue
    before = old.get(key, _UNSET)
    if before is _UNSET:
      default = defaults.get(key, _UNSET)
      if new[key] == default or (default is _UNSET and new[key] in (None, False, 0, "")):
        continue
      before = "(absent)"
    if before != new[key]:
      changes.append(f"{key}: {before!r} -> {new[key]!r}")
  return changes


def check(workdir: paths.Path, config: ml_collections.ConfigDict, allow: bool = False) -> list[str]:
  """Refuses to resume ``workdir`` under a changed config (call only when resuming).

  Returns:
    The changes (empty when none, or when the workdir has no readable ``config.json``).

  Raises:
    ConfigError: fields changed and ``allow`` is False; the message lists them.
  """
  try:
    saved = json.loads((workdir / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return []
  changes = changed_fields(saved, config) if isinstance(saved, Mapping) else []
  if changes and not allow:
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    raise ConfigError(
      f"--workdir={workdir} holds a run with another config ({shown}): rerun with its "
      "values, use another --workdir, or pass --allow_config_changes to resume under the new ones"
    )
  return changes
