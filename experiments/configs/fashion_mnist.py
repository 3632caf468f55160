"""Fashion-MNIST at CPU scale: the paper's comparisons (Tables 1-2, mean shift, activations).

Reproduces, on a 2-core CPU in minutes per run: NF-ResNets match BN-ResNets
(Table 1), NF does not degrade at small batch sizes where BN does (Table 2),
Scaled WS is what lets a deep NF network train (He init without WS vs Scaled
WS vs BN), and ReLU/SiLU/GELU train alike with their gammas. Data: the
complete official Fashion-MNIST files (60,000 train / 10,000 test, 28x28x1)
resized to 16 px, no augmentation; 0.1 epoch (6,000 images) per run, the
first 2% of it a linear warm-up.
Models: width 0.25, CIFAR stem (3x3 conv, no pooling).

Arguments (same as imagenet.py): ``model=nf|he|bn|skipinit|fixup|nf_regnet``,
``depth=N``, ``variant=B0..B5``, ``activation=NAME``, ``width=W``,
``regularized``, ``smoke``. Sweeps (``get_sweep``): ``table1``, ``table1_full``,
``table2``, ``depth``, ``activation``, ``meanshift``, ``table3``.

Command::

  export NFRESNET_DATA_DIR=../shared/data
  python -m experiments.main --config=experiments/configs/fashion_mnist.py:model=nf,depth=18 \
    --workdir=/tmp/fmnist_nf18
  python -m experiments.sweep --config=experiments/configs/fashion_mnist.py:table1 \
    --workdir=results/table1/runs

Hardware: 2 CPU cores, no accelerator; 1-2 minutes per depth-18 run, 2-5 minutes
at depth 50 (shared machine). Measured (docs/reproducing.md): BN-ResNet-18 81.1%,
NF-ResNet-18 55.4% test accuracy (median of 3 seeds): NF learns more slowly in
its first 47 steps; with ``--config.train.num_epochs=1`` they reach 89.5% and
88.7%.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import sweeps
from experiments.configs.small_images import SmallImageRecipe, build_config, cpu_sweep

RECIPE = SmallImageRecipe(
  what="fashion_mnist",
  data={"name": "fashion_mnist", "image_size": 16, "augment": "none"},
  train={
    "batch_size": 128,
    "eval_batch_size": 1000,
    "num_epochs": 0.1,
    "checkpoint_every": 200,
    "log_every": 10,
  },
  warmup_epochs=0.02,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fashion-MNIST config for the model the argument selects (module docstring)."""
  return build_config(arg, RECIPE)


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """CPU-scale sweeps: ``table1``, ``table1_full``, ``table2``, ``depth``, ``activation``, ..."""
  return cpu_sweep(arg, RECIPE.what)
