"""CIFAR-10 at CPU scale: the Table 1/2 comparisons in miniature on real colour images.

Data: full CIFAR-10 through TFDS when it is prepared (``data.name=tfds``,
``data.tfds_name`` is preset to cifar10: pass ``--config.data.name=tfds``), otherwise a
directory of the original files (binary or python version), e.g. the
4,000/1,000-image subset in ``../shared/data/cifar-10-subset`` (the default:
``$NFRESNET_DATA_DIR`` or ``--config.data.data_dir``). 32 px, CIFAR
augmentation (4-px padded random crop and flip), 3 epochs. Models: width 0.25,
CIFAR stem.

Arguments (same as imagenet.py): ``model=nf|he|bn|skipinit|fixup|nf_regnet|bn_regnet``,
``depth=N``, ``variant=B0..B5``, ``activation=NAME``, ``width=W``,
``regularized``, ``smoke``. Sweeps: ``table1``, ``table1_full``, ``table2``,
``depth``, ``activation``, ``meanshift``, ``table3``.

Command::

  export NFRESNET_DATA_DIR=../shared/data
  python -m experiments.main --config=experiments/configs/cifar10.py:model=bn,depth=18 \
    --workdir=/tmp/cifar_bn18

Hardware: 2 CPU cores. Expected result: not measured (this config is not one
of the committed studies: on the 4,000-image subset, 3 epochs are 94 steps of
batch 128); the full data set needs far more epochs for paper-like numbers.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import sweeps
from experiments.configs.small_images import (
  Protocol,
  SmallImageRecipe,
  build_config,
  cpu_sweep,
  protocol_sweep,
)

RECIPE = SmallImageRecipe(
  what="cifar10",
  data={"name": "cifar10", "tfds_name": "cifar10", "image_size": 32, "augment": "cifar"},
  train={
    "batch_size": 128,
    "eval_batch_size": 1000,
    "num_epochs": 3.0,
    "checkpoint_every": 200,
    "log_every": 20,
  },
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """CIFAR-10 config for the model the argument selects (module docstring)."""
  return build_config(arg, RECIPE)


PROTOCOL = Protocol(
  overrides={
    "data.validation_examples": 500,
    "train.num_epochs": 30.0,
    "train.eval_every_epochs": 1.5,
    "train.checkpoint_every": 100,
    "train.log_every": 10,
    "optimizer.warmup_fraction": 5 / 90,  # The paper's 5 of 90 epochs.
    "optimizer.base_lr": 0.1,
  }
)
"""The reproduction protocol on the CIFAR-10 subset (docs/reproducing.md): 500 of the 4,000
training images held out for validation, 30 epochs (810 steps of batch 128), validation every
1.5 epochs."""
PROTOCOL_SWEEPS = ("regnet_tune", "regnet")


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """The protocol's ``regnet`` study (``regnet_tune``: the learning-rate grid; ``regnet``: the
  seeds at the chosen rates) and the CPU-scale sweeps (same names as imagenet.py)."""
  if arg in PROTOCOL_SWEEPS:
    return protocol_sweep(arg, RECIPE.what, PROTOCOL)
  return cpu_sweep(arg, RECIPE.what)
