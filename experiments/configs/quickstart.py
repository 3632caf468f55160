"""Quick start: a small NF-ResNet-18 on the embedded 8x8 digits dataset, offline, on a CPU.

Reproduces: the NF-ResNet training recipe of the paper (SPEC section 6: Nesterov
SGD, batch-scaled learning rate with linear warm-up and cosine decay, label
smoothing 0.1, weight decay off gains/biases) at toy scale; ``:model=bn`` swaps
in the BN-ResNet-V2 baseline with the same everything else.

Command::

  python -m experiments.main --config=experiments/configs/quickstart.py \
    --workdir=/tmp/nfresnet_quickstart
  python -m experiments.main --config=experiments/configs/quickstart.py:model=bn \
    --workdir=/tmp/nfresnet_quickstart_bn

Hardware: a 2-core CPU, no accelerator, no network (scikit-learn's digits ship
with the package). Expected result: test accuracy >= 95% on the 360 held-out
digits within 5 minutes, compilation included (measured numbers are in
docs/training.md).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import ConfigError, base_config

ARGS = {"model=nf": "nf_resnet", "model=bn": "resnet_v2"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The quick-start config; ``arg="model=bn"`` selects the BN-ResNet-V2 baseline."""
  arg = arg or "model=nf"
  if arg not in ARGS:
    raise ConfigError(f"unknown quickstart argument {arg!r}; allowed: {', '.join(ARGS)}")
  config = base_config()
  config.model_name = ARGS[arg]
  config.model = ml_collections.ConfigDict({"depth": 18, "width": 0.25, "stem": "cifar"})

  config.data.name = "digits"
  config.data.image_size = 16
  config.data.augment = "none"

  config.train.batch_size = 128
  config.train.eval_batch_size = 128
  config.train.num_epochs = 15.0
  config.train.eval_every = 0
  config.train.checkpoint_every = 50
  config.train.log_every = 10
  config.train.label_smoothing = 0.1

  config.optimizer.base_lr = 0.4
  config.optimizer.weight_decay = 5e-5
  config.optimizer.warmup_epochs = 1.0
  return config
