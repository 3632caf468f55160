"""Fashion-MNIST at CPU scale: the paper's comparisons (Tables 1-2, mean shift, activations).

Also the NFNets paper's large-batch comparison (AGC; ``large_batch_tune``, ``large_batch``).

Reproduces, on a 2-core CPU in minutes per run: NF-ResNets match BN-ResNets
(Table 1), NF does not degrade at small batch sizes where BN does (Table 2),
Scaled WS is what lets a deep NF network train (He init without WS vs Scaled
WS vs BN), and ReLU/SiLU/GELU train alike with their gammas. Data: the
complete official Fashion-MNIST files (60,000 train / 10,000 test, 28x28x1)
resized to 16 px, no augmentation; 0.1 epoch (6,000 images) per run, the
first 2% of it a linear warm-up.
Models: width 0.25, CIFAR stem (3x3 conv, no pooling).

Arguments (same as imagenet.py): ``model=nf|he|bn|skipinit|fixup|nf_regnet|bn_regnet``,
``depth=N``, ``variant=B0..B5``, ``activation=NAME``, ``width=W``,
``regularized``, ``smoke``. Sweeps (``get_sweep``): ``table1``, ``table1_full``,
``table2``, ``depth``, ``activation``, ``meanshift``, ``table3``.

Command::

  export NFRESNET_DATA_DIR=../shared/data
  python -m experiments.main --config=experiments/configs/fashion_mnist.py:model=nf,depth=18 \
    --workdir=/tmp/fmnist_nf18
  python -m experiments.studies.sweep --config=experiments/configs/fashion_mnist.py:table1 \
    --workdir=results/table1/runs

Hardware: 2 CPU cores, no accelerator; 1-2 minutes per depth-18 run, 2-5 minutes
at depth 50 (shared machine). Measured results: the 0.1-epoch screens in
``results/short/<study>/report.md`` (the protocol studies in ``results/<study>/``), summarised
in the README's results table and discussed in docs/reproducing.md.
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


PROTOCOL = Protocol(
  overrides={
    "data.validation_examples": 5000,
    "train.num_epochs": 10.0,
    "train.eval_every_epochs": 0.5,
    "train.checkpoint_every": 500,
    "train.log_every": 50,
    "optimizer.warmup_fraction": 5 / 90,  # The paper's 5 of 90 epochs.
    "optimizer.base_lr": 0.1,
  }
)
"""The reproduction protocol on Fashion-MNIST (docs/reproducing.md): 5,000 training images
held out for validation, 10 epochs (4,297 steps of batch 128), validation every half epoch."""
PROTOCOL_SWEEPS = (
  "table1_tune",
  "table1",
  "table2",
  "meanshift_tune",
  "meanshift",
  "activation_tune",
  "activation",
  "large_batch_tune",
  "large_batch",
)


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """The protocol's studies (``PROTOCOL_SWEEPS``) and the short CPU-scale sweeps.

  ``<study>_tune`` is the learning-rate grid at seed 0, ``<study>`` the seeds at the rates
  ``experiments.studies.tune`` chose (``results/<study>/tuning.csv``); ``table2`` takes
  its models' rates from study ``table1``. ``large_batch_tune`` / ``large_batch``: NF-ResNet-18
  without and with AGC (five thresholds) and BN-ResNet-18 at batch 256 to 8192, the same 10
  epochs each, micro-batches of at most 1,024 (docs/reproducing.md, "Large-batch study"). The
  short sweeps (``table1_short``, ``table2_short``, ``depth``, ``activation_short``,
  ``meanshift_short``, ``table3``) are the 0.1-epoch studies without tuning or validation split
  (committed in ``results/short/<study>/runs``, ``bash results/run_studies.sh``).
  """
  if arg in PROTOCOL_SWEEPS:
    return protocol_sweep(arg, RECIPE.what, PROTOCOL)
  short = {f"{name}_short": name for name in ("table1", "table2", "activation", "meanshift")}
  return cpu_sweep(short.get(arg, arg), RECIPE.what)
