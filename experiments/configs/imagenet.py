"""The paper's ImageNet recipes (SPEC section 6): NF/BN/SkipInit/Fixup ResNets and NF-RegNets.

Reproduces: Table 1 (NF-ResNets vs BN-ResNets, SkipInit and Fixup at depths
50-288, unregularized and regularized), Table 2 (NF vs BN ResNet-50 at batch
sizes 1024 down to 4) and Table 3 (NF-RegNet B0-B5), plus depth and activation
sweeps.

Arguments (``--config=experiments/configs/imagenet.py:ARGS``, comma-separated):
``model=nf|he|bn|skipinit|fixup|nf_regnet`` (default nf), ``depth=50|101|...``
(ResNets, default 50), ``variant=B0..B5`` (NF-RegNets, default B0),
``activation=relu|silu|gelu|...`` (NF ResNets), ``regularized`` (stochastic
depth 0.1 where the model has it, and dropout 0.25), ``smoke`` (tiny model,
synthetic data, 2 steps). ``get_sweep(name)`` offers ``table1``, ``table2``,
``depth``, ``activation``, ``meanshift`` and ``table3``.

Recipes:
- ResNets: 90 epochs, batch 1024, Nesterov SGD 0.9, lr 0.1 * batch / 256 (0.4
  at 1024; SkipInit and Fixup 0.05 * batch / 256 = 0.2, the paper's "0.2"), 5
  warm-up epochs then cosine to 0, label smoothing 0.1, weight decay 5e-5 off
  gains and biases, 224 px Inception crops.
- NF-RegNets: 360 epochs, batch 1024, lr 0.4 not batch-scaled, cosine to
  0.001, weight decay 5e-5, EMA 0.99999, label smoothing 0.1, MixUp (0.2) and
  CutMix (1.0), SiLU, stochastic depth 0.1, the variant's dropout and training
  resolution from ``nfresnet.NF_REGNET_VARIANTS``. The data pipeline has a single
  ``image_size``, so evaluation runs at the training resolution rather than the
  variant's (larger) test resolution.
Steps, warm-up steps and the batch-scaled learning rate are derived at run
time (``experiments.optim.make_schedule``), so ``--config.train.batch_size`` or
``--config.train.num_epochs`` overrides stay consistent.

Command::

  python -m experiments.main \
    --config=experiments/configs/imagenet.py:model=nf,depth=101,regularized \
    --workdir=/ckpt/nf101_reg --config.data.data_dir=/data/tfds
  python -m experiments.sweep --config=experiments/configs/imagenet.py:table1 \
    --workdir=/ckpt/t1 --dry_run

Hardware: the paper used TPU v3 pods; data-parallel over every local device
(batch 1024 on 8-32 accelerators; batch must divide by the device count).
Expected result (paper): NF-ResNet-50 ~76.8% top-1 unregularized; regularized
NF-ResNet-288 79.5%; NF-RegNet-B0 ~76.8%. Not run at this scale here.
"""

from __future__ import annotations

import ml_collections

import nfresnet
from experiments.configs import ConfigError, base_config, sweeps
from experiments.configs import args as config_args
from experiments.configs.args import Key, flag

KEYS = {
  "model": Key(str, tuple(config_args.MODEL_NAMES), "nf"),
  "depth": Key(int, (18, 26, 34, 50, 101, 152, 200, 288), 50),
  "variant": Key(str, tuple(nfresnet.NF_REGNET_VARIANTS), "B0"),
  "activation": Key(str, tuple(nfresnet.ACTIVATIONS), "relu"),
  "regularized": flag(),
  "smoke": flag(),
}
PAPER_DEPTHS = (50, 101, 152, 200, 288)
PAPER_SEEDS = 5
UNSTABLE_MODEL_LR = 0.05  # SkipInit and Fixup: 0.2 at batch 1024 (SPEC 6).
REGNET = dict(epochs=360.0, lr=0.4, end_lr=0.001, ema=0.99999, mixup=0.2, cutmix=1.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ImageNet recipe for the model the argument selects (see the module docstring)."""
  a = config_args.parse_args(arg, KEYS, "imagenet")
  config = base_config()
  config.data.name = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.augment = "inception"
  config.data.image_size = 224
  config.train.eval_batch_size = 1000  # 50,000 validation images in 50 batches.
  config.train.checkpoint_every = 5000
  if a["model"] == "nf_regnet":
    regnet_recipe(config, a["variant"], a["regularized"])
  else:
    config.model_name, config.model = config_args.resnet_model(
      a["model"],
      a["depth"],
      width=1.0,
      stem="imagenet",
      activation=a["activation"],
      regularized=a["regularized"],
    )
    if a["model"] in ("skipinit", "fixup"):
      config.optimizer.base_lr = UNSTABLE_MODEL_LR
  if a["smoke"]:
    config_args.apply_smoke(config)
  return config


def regnet_recipe(config: ml_collections.ConfigDict, variant: str, regularized: bool) -> None:
  """NF-RegNet training recipe (SPEC 6, Table 3); always regularized as in the paper."""
  if regularized:
    raise ConfigError("model=nf_regnet is always regularized (variant dropout, stochdepth 0.1)")
  config.model_name = "nf_regnet"
  config.model = ml_collections.ConfigDict({"variant": variant, "activation": "silu"})
  config.data.image_size = nfresnet.NF_REGNET_VARIANTS[variant].train_resolution
  config.data.mixup_alpha = REGNET["mixup"]
  config.data.cutmix_alpha = REGNET["cutmix"]
  config.train.num_epochs = REGNET["epochs"]
  config.train.ema_decay = REGNET["ema"]
  config.optimizer.base_lr = REGNET["lr"]
  config.optimizer.scale_by_batch = False
  config.optimizer.end_lr = REGNET["end_lr"]


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """Sweeps of the paper at full scale: ``table1`` (200 runs), ``table2``, ``table3``, ..."""
  builders = {
    "table1": lambda: sweeps.table1(PAPER_DEPTHS, PAPER_SEEDS),
    "table2": lambda: sweeps.table2(50, sweeps.powers_of_two(1024, 4)),
    "depth": lambda: sweeps.depth_sweep(PAPER_DEPTHS),
    "activation": lambda: sweeps.activation_sweep(50),
    "meanshift": lambda: sweeps.meanshift_sweep(50),
    "table3": lambda: sweeps.table3(tuple(nfresnet.NF_REGNET_VARIANTS)),
  }
  return sweeps.select(arg, builders, "imagenet")
