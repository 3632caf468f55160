"""Quick start: a small NF-ResNet-18 on the embedded 8x8 digits dataset, offline, on a CPU.

Reproduces: the NF-ResNet training recipe of the paper (Section 5: Nesterov
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

from experiments.configs import args as config_args
from experiments.configs import base_config

MODELS = {"nf": "nf_resnet", "bn": "resnet_v2"}
KEYS = {
  "model": config_args.Key(choices=tuple(MODELS), default="nf"),
  "smoke": config_args.flag(),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The quick-start config.

  Args:
    arg: ``model=nf`` (default) or ``model=bn`` for the BN-ResNet-V2 baseline;
      ``smoke`` shrinks it to a 2-step run on synthetic data.
  """
  parsed = config_args.parse_args(arg, KEYS, "quickstart")
  config = base_config()
  config.model_name = MODELS[parsed["model"]]
  config.model = ml_collections.ConfigDict(
    {"depth": 18, "width": 0.25, "stem": "cifar", "remat": False}
  )
  if config.model_name == "nf_resnet":
    config.model.stack_blocks = False  # True: scan over each stage's blocks (same numbers).

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
  if parsed["smoke"]:
    config_args.apply_smoke(config)
  return config
