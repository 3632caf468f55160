"""The 8x8 digits data set (bundled with scikit-learn, offline): the fastest real-data config.

Reproduces the paper's comparisons at the smallest possible scale: 1,437
training and 360 test digits resized to 16 px, 10 epochs, width 0.25 with the
CIFAR stem. Useful to check a sweep end to end in a few minutes; the committed
studies use Fashion-MNIST (fashion_mnist.py), where differences are clearer.

Arguments (same as imagenet.py): ``model=nf|he|bn|skipinit|fixup|nf_regnet|bn_regnet``,
``depth=N``, ``variant=B0..B5``, ``activation=NAME``, ``width=W``,
``regularized``, ``smoke``. Sweeps: ``table1``, ``table1_full``, ``table2``,
``depth``, ``activation``, ``meanshift``, ``table3``.

Command::

  python -m experiments.main --config=experiments/configs/digits.py:model=nf,depth=18 \
    --workdir=/tmp/digits_nf18
  python -m experiments.studies.sweep --config=experiments/configs/digits.py:activation \
    --workdir=/tmp/digits_activation

Hardware: 2 CPU cores. Expected result: not measured with this file; the
quick-start config (same data, 15 epochs of batch 128) has its measured accuracies in
``results/quickstart/report.md`` (docs/training.md shows them).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import sweeps
from experiments.configs.small_images import SmallImageRecipe, build_config, cpu_sweep

RECIPE = SmallImageRecipe(
  what="digits",
  data={"name": "digits", "image_size": 16, "augment": "none"},
  train={
    "batch_size": 64,
    "eval_batch_size": 360,
    "num_epochs": 10.0,
    "checkpoint_every": 100,
    "log_every": 10,
  },
  warmup_epochs=1.0,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Digits config for the model the argument selects (module docstring)."""
  return build_config(arg, RECIPE)


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """CPU-scale sweeps (same names as imagenet.py)."""
  return cpu_sweep(arg, RECIPE.what)
