"""Shared builder of the small-image configs (Fashion-MNIST, CIFAR-10, digits) at CPU scale.

``fashion_mnist.py``, ``cifar10.py`` and ``digits.py`` differ only in their data
section and training length; the model arguments and sweep names are the
same as ``imagenet.py``'s, with grids small enough for a 2-core CPU (see each
file's docstring and docs/reproducing.md).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

import nfresnet
from experiments.configs import ConfigError, base_config, sweeps
from experiments.configs import args as config_args
from experiments.configs.args import Key, flag

KEYS = {
  "model": Key(str, tuple(config_args.MODEL_NAMES), "nf"),
  "depth": Key(int, (18, 26, 34, 50, 101, 152, 200, 288, 600), 18),
  "variant": Key(str, tuple(nfresnet.NF_REGNET_VARIANTS), "B0"),
  "activation": Key(str, tuple(nfresnet.ACTIVATIONS), "relu"),
  "width": Key(float, (), 0.25),
  "regularized": flag(),
  "smoke": flag(),
}
UNSTABLE_MODEL_LR_FACTOR = 0.5  # SkipInit, Fixup: half the NF/BN rate (paper Section 5).
CPU_SEEDS = 3
CPU_BATCH_SIZES = (256, 128, 64, 32, 16, 8, 4)
CPU_DEPTHS = (18, 26)
MEANSHIFT_DEPTH = 50
RESULTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "results"
TUNING_CSV = "tuning.csv"
TUNE_SUFFIX = "_tune"  # ``<study>_tune``: the study's learning-rate grid.
TABLE1_BATCH = 128  # The protocol's batch size, Table 1's runs.
LARGE_BATCH_LOGGING = {"train.log_every": 1}
"""The large-batch study logs every step: its gradient-norm spikes are counted on the train rows
(``experiments.studies.large_batch``), and at batch 8192 a 10-epoch run has only 68 steps."""


@dataclasses.dataclass(frozen=True)
class SmallImageRecipe:
  """What differs between the small-image configs.

  Attributes:
    what: config name for messages ("fashion_mnist").
    data: ``config.data`` fields to set.
    train: ``config.train`` fields to set.
    base_lr: ``optimizer.base_lr`` (batch-scaled: peak = base_lr * batch / 256).
    warmup_epochs: linear warm-up length.
  """

  what: str
  data: Mapping[str, Any]
  train: Mapping[str, Any]
  base_lr: float = 0.4
  warmup_epochs: float = 0.1


def build_config(arg: str | None, recipe: SmallImageRecipe) -> ml_collections.ConfigDict:
  """The config of ``recipe`` for the model the argument selects.

  Args:
    arg: ``model=nf|he|bn|skipinit|fixup|nf_regnet|bn_regnet,depth=N,variant=B0,
      activation=NAME,width=W,regularized,smoke``.
    recipe: the dataset's data and training settings.

  Returns:
    The config; derived values (steps, warm-up steps, peak lr) are left to
    ``experiments.optim`` at run time.
  """
  a = config_args.parse_args(arg, KEYS, recipe.what)
  config = base_config()
  config.data.update(dict(recipe.data))
  config.train.update(dict(recipe.train))
  config.optimizer.base_lr = recipe.base_lr
  config.optimizer.warmup_epochs = recipe.warmup_epochs
  if a["model"] in config_args.REGNET_MODELS:
    config.model_name = config_args.MODEL_NAMES[a["model"]]
    dropout = config_args.REGULARIZED_DROPOUT if a["regularized"] else 0.0
    config.model = ml_collections.ConfigDict(
      {"variant": a["variant"], "width": a["width"], "dropout_rate": dropout, "remat": False}
    )
  else:
    config.model_name, config.model = config_args.resnet_model(
      a["model"],
      a["depth"],
      width=a["width"],
      stem="cifar",
      activation=a["activation"],
      regularized=a["regularized"],
    )
    if a["model"] in ("skipinit", "fixup"):
      config.optimizer.base_lr = recipe.base_lr * UNSTABLE_MODEL_LR_FACTOR
  if a["smoke"]:
    config_args.apply_smoke(config)
  return config


def cpu_sweep(name: str | None, what: str) -> list[sweeps.SweepEntry]:
  """The CPU-scale versions of the paper's sweeps (docs/reproducing.md).

  ``table1`` drops the regularized half (a one-epoch run does not overfit) and
  Fixup; ``table2`` runs batch 256 down to 4 with the same number of epochs.
  """
  builders = {
    "table1": lambda: sweeps.table1(
      CPU_DEPTHS, CPU_SEEDS, models=("nf", "bn", "skipinit"), regularization=(False,)
    ),
    "table1_full": lambda: sweeps.table1(CPU_DEPTHS, CPU_SEEDS),
    "table2": lambda: sweeps.table2(18, CPU_BATCH_SIZES),
    "depth": lambda: sweeps.depth_sweep((18, 34, 50)),
    "activation": lambda: sweeps.activation_sweep(18, seeds=2),
    "meanshift": lambda: sweeps.meanshift_sweep(MEANSHIFT_DEPTH, seeds=2),
    "table3": lambda: sweeps.table3(("B0", "B1")),
  }
  return sweeps.select(name, builders, what)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The reproduction protocol of a dataset (docs/reproducing.md).

  Attributes:
    overrides: applied to every protocol run on top of the config (validation split,
      training length, evaluation interval, warm-up fraction), so the base config and
      the studies committed with it stay as they are.
    centre_lr: centre of the learning-rate grid (``optimizer.base_lr``, batch-scaled:
      the paper's rule ``0.1 * batch / 256``).
    seeds: seeds per cell at the chosen learning rate.
    depths: the two depths of Table 1 (basic and bottleneck blocks).
    meanshift: ``(depth, width)`` of the mean-shift study's networks.
    batch_sizes: Table 2's batch sizes.
    regnet: ``(variant, width)`` of the NF-RegNet vs BN-RegNet study.
    large_batch_sizes: the large-batch study's batch sizes (NF, NF + AGC, BN at depth 18).
    agc_clips: its AGC clipping thresholds (``optimizer.agc_clip``).
    max_micro_batch: the largest micro-batch of its runs; a larger batch is accumulated
      (``train.grad_accum_steps``, ``experiments.configs.sweeps.accumulation_steps``).
  """

  overrides: Mapping[str, Any]
  centre_lr: float = 0.1
  seeds: int = 3
  depths: tuple[int, ...] = (18, 26)
  meanshift: tuple[int, float] = (MEANSHIFT_DEPTH, 0.125)
  batch_sizes: tuple[int, ...] = (1024, 512, 256, 128, 64, 32, 16, 8, 4)
  regnet: tuple[str, float] = ("B0", 0.25)
  large_batch_sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
  agc_clips: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16)
  max_micro_batch: int = 1024


def protocol_cells(study: str, protocol: Protocol) -> list[sweeps.SweepEntry]:
  """The cells (settings, one per table entry) of a protocol study, seed left out."""
  depth, width = protocol.meanshift
  no_gamma = {"model.scale_activations": False}
  if study == "table1":
    entries = sweeps.table1(protocol.depths, 1, regularization=(False,))
    entries += sweeps.table1(protocol.depths, 1, models=("nf", "bn"), regularization=(True,))
  elif study == "meanshift":
    entries = [e.with_arg(f"width={width}") for e in sweeps.meanshift_sweep(depth)]
    entries.append(
      sweeps.SweepEntry(f"nf{depth}_nogamma", f"model=nf,depth={depth},width={width}", no_gamma)
    )
  elif study == "activation":
    entries = sweeps.activation_sweep(18)
    entries.append(sweeps.SweepEntry("nf18_relu_nogamma", "model=nf,depth=18", no_gamma))
  elif study == "regnet":
    variant, width = protocol.regnet
    entries = [
      sweeps.SweepEntry(
        f"{model}_{variant.lower()}", f"model={model},variant={variant},width={width}"
      )
      for model in config_args.REGNET_MODELS
    ]
  elif study == "large_batch":
    entries = [
      dataclasses.replace(e, overrides={**e.overrides, **LARGE_BATCH_LOGGING})
      for e in sweeps.large_batch(
        18, protocol.large_batch_sizes, protocol.agc_clips, protocol.max_micro_batch
      )
    ]
  else:
    raise ConfigError(
      f"unknown protocol study {study!r}; allowed: table1, meanshift, activation, regnet, "
      "large_batch"
    )
  return [
    dataclasses.replace(cell, overrides={**protocol.overrides, **cell.overrides})
    for cell in sweeps.cells(entries)
  ]


def tuning_rows(what: str, study: str, required: bool = True) -> list[dict[str, str]]:
  """The rows of ``results/<study>/tuning.csv`` (``experiments.studies.tune``).

  Raises:
    ConfigError: the file is missing and ``required`` (``[]`` otherwise).
  """
  path = RESULTS_DIR / study / TUNING_CSV
  if not path.is_file():
    if not required:
      return []
    raise ConfigError(
      f"{path} not found: run the {what}.py:{study}_tune sweep and "
      f"python -m experiments.studies.tune results/{study}/tuning --out=results/{study} first"
    )
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


def tuned_rates(what: str, study: str) -> dict[str, float]:
  """``{cell: base_lr}`` chosen by ``experiments.studies.tune`` (``results/<study>/tuning.csv``).

  Raises:
    ConfigError: no tuning file, or a cell whose best rate is still at a grid edge.
  """
  chosen = [row for row in tuning_rows(what, study) if row["chosen"] == "1"]
  edges = [row["cell"] for row in chosen if row.get("next_lr")]
  if edges:
    raise ConfigError(
      f"best rate at a grid edge for {', '.join(edges)}: rerun the {what}.py:{study}_tune "
      "sweep and experiments.studies.tune first"
    )
  return {row["cell"]: float(row["base_lr"]) for row in chosen}


def chosen_runs(what: str, study: str) -> dict[str, str]:
  """``{cell: run}``: the tuning run at each cell's chosen rate (its seed-0 run)."""
  rows = tuning_rows(what, study)
  return {row["cell"]: row["run"] for row in rows if row["chosen"] == "1"}


def grid_extensions(what: str, study: str) -> dict[str, list[float]]:
  """``{cell: rates}`` tried or proposed (``next_lr``) so far; empty before any tuning."""
  extra: dict[str, list[float]] = {}
  for row in tuning_rows(what, study, required=False):
    rates = extra.setdefault(row["cell"], [])
    rates.append(float(row["base_lr"]))
    if row.get("next_lr"):
      rates.append(float(row["next_lr"]))
  return extra


def table2_cells(protocol: Protocol, rates: Mapping[str, float]) -> list[sweeps.SweepEntry]:
  """Table 2: NF-/BN-ResNet-18 at every batch size, the learning rate by the scaling rule.

  ``optimizer.base_lr`` is the one chosen for the model at batch 128 in study ``table1``;
  the peak learning rate is ``base_lr * batch / 256`` at every batch size.
  """
  cells = []
  for model in ("nf", "bn"):
    for batch in protocol.batch_sizes:
      overrides = {
        **protocol.overrides,
        "train.batch_size": batch,
        "optimizer.base_lr": rates[f"{model}18"],
      }
      cells.append(
        sweeps.SweepEntry(f"{model}18_batch{batch}", f"model={model},depth=18", overrides)
      )
  return cells


def table1_reuse(cell: str, seed: int) -> str | None:
  """Table 1's run of a Table 2 cell at batch 128 (the same config), else ``None``."""
  model, _, batch = cell.partition("_batch")
  return f"../../table1/runs/{model}_seed{seed}" if batch == str(TABLE1_BATCH) else None


def protocol_sweep(name: str, what: str, protocol: Protocol) -> list[sweeps.SweepEntry]:
  """``<study>_tune`` (learning-rate grid, seed 0) or ``<study>`` (seeds at the chosen rate)."""
  study, tune = name.removesuffix(TUNE_SUFFIX), name.endswith(TUNE_SUFFIX)
  if study == "table2" and not tune:
    cells = table2_cells(protocol, tuned_rates(what, "table1"))
    return [
      sweeps.SweepEntry(
        f"{cell.name}_seed{seed}",
        cell.arg,
        {**cell.overrides, "train.seed": seed},
        table1_reuse(cell.name, seed),
      )
      for cell in cells
      for seed in range(protocol.seeds)
    ]
  cells = protocol_cells(study, protocol)
  if tune:
    return sweeps.lr_grid(cells, protocol.centre_lr, extra=grid_extensions(what, study))
  rates = tuned_rates(what, study)
  reuse = {f"{cell}_seed0": f"../tuning/{run}" for cell, run in chosen_runs(what, study).items()}
  return sweeps.tuned_seeds(cells, rates, protocol.seeds, reuse)
