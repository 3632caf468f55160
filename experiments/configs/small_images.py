"""Shared builder of the small-image configs (Fashion-MNIST, CIFAR-10, digits) at CPU scale.

``fashion_mnist.py``, ``cifar10.py`` and ``digits.py`` differ only in their data
section and training length; the model arguments and sweep names are the
same as ``imagenet.py``'s, with grids small enough for a 2-core CPU (see each
file's docstring and docs/reproducing.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

import nfresnet
from experiments.configs import args as config_args
from experiments.configs import base_config, sweeps
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
UNSTABLE_MODEL_LR_FACTOR = 0.5  # SkipInit and Fixup: half the NF/BN rate, as in SPEC 6.
CPU_SEEDS = 3
CPU_BATCH_SIZES = (256, 128, 64, 32, 16, 8, 4)
CPU_DEPTHS = (18, 26)
MEANSHIFT_DEPTH = 50


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
    arg: ``model=nf|he|bn|skipinit|fixup|nf_regnet,depth=N,variant=B0,
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
  if a["model"] == "nf_regnet":
    config.model_name = "nf_regnet"
    dropout = config_args.REGULARIZED_DROPOUT if a["regularized"] else 0.0
    config.model = ml_collections.ConfigDict(
      {"variant": a["variant"], "width": a["width"], "dropout_rate": dropout}
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
  """The CPU-scale versions of the paper's sweeps (docs/reproducing.md, studies 1-4).

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
