"""The paper's ImageNet recipes (paper Section 5): NF/BN/SkipInit/Fixup ResNets, NF/BN-RegNets.

Reproduces: Table 1 (NF-ResNets vs BN-ResNets, SkipInit and Fixup at depths
50-288, unregularized and regularized), Table 2 (NF vs BN ResNet-50 at batch
sizes 1024 down to 4) and Table 3 (NF-RegNet B0-B5; ``model=bn_regnet`` is their
BatchNorm counterpart, standing in for the BN networks of the same design the paper
compares with), plus depth and activation sweeps.

Arguments (``--config=experiments/configs/imagenet.py:ARGS``, comma-separated):
``model=nf|he|bn|skipinit|fixup|nf_regnet|bn_regnet`` (default nf), ``depth=50|101|...``
(ResNets, default 50), ``variant=B0..B5`` (NF- and BN-RegNets, default B0),
``activation=relu|silu|gelu|...`` (NF ResNets), ``regularized`` (stochastic
depth 0.1 where the model has it, and dropout 0.25), ``smoke`` (tiny model,
synthetic data, 2 steps). ``get_sweep(name)`` offers ``table1``, ``table2``,
``depth``, ``activation``, ``meanshift`` and ``table3``.

Recipes:
- ResNets: 90 epochs, batch 1024, Nesterov SGD 0.9, lr 0.1 * batch / 256 (0.4
  at 1024; SkipInit and Fixup 0.05 * batch / 256 = 0.2, the paper's "0.2"), 5
  warm-up epochs then cosine to 0, label smoothing 0.1, weight decay 5e-5 off
  gains and biases, 224 px Inception crops.
- NF-RegNets (BN-RegNets: the same recipe): 360 epochs, batch 1024, lr 0.4 not
  batch-scaled, cosine to 0.001, weight decay per variant (5e-5 for B0 rising by 1e-5
  per variant to 1e-4 for B5), EMA 0.99999 with the reference's warm-up, label
  smoothing 0.1, MixUp (0.2) and CutMix (1.0) on half of each batch each, SiLU,
  stochastic depth 0.1, the variant's dropout, training resolution and test resolution
  from ``nfresnet.NF_REGNET_VARIANTS`` (``data.image_size`` and ``data.eval_image_size``).
- Every recipe: bicubic resizing of the Inception crops and of the S / (S + 32) centre
  crop at evaluation, as the reference implementation. The evaluation batch is padded
  up to a multiple of the device count and the padding masked, so it works on any count.
  ``train.compute_dtype="auto"``: bfloat16 activations on GPUs and TPUs, float32 on CPUs.
- Table 2 (``table2`` sweep): every batch size trains for ``TABLE2_EPOCHS`` = 15
  epochs, our choice of a fixed budget: the 90-epoch recipe at batch 4 would be 28.8M
  steps; 15 epochs is 4.8M steps at batch 4 and 18,766 at batch 1024.
Steps, warm-up steps and the batch-scaled learning rate are derived at run
time (``experiments.optim.make_schedule``), so ``--config.train.batch_size`` or
``--config.train.num_epochs`` overrides stay consistent.

Command::

  python -m experiments.main \
    --config=experiments/configs/imagenet.py:model=nf,depth=101,regularized \
    --workdir=/ckpt/nf101_reg --config.data.data_dir=/data/tfds
  python -m experiments.studies.sweep --config=experiments/configs/imagenet.py:table1 \
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
UNSTABLE_MODEL_LR = 0.05  # SkipInit and Fixup: 0.2 at batch 1024 (paper Section 5).
REGNET_RECIPE = dict(epochs=360.0, lr=0.4, end_lr=0.001, ema=0.99999, mixup=0.2, cutmix=1.0)
REGNET_WEIGHT_DECAY = {"B0": 5e-5, "B1": 6e-5, "B2": 7e-5, "B3": 8e-5, "B4": 9e-5, "B5": 1e-4}
"""Weight decay per NF-RegNet variant, from the reference implementation's NF-RegNet config."""
TABLE2_EPOCHS = 15.0  # The same budget for every batch size (see the module docstring).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ImageNet recipe for the model the argument selects (see the module docstring)."""
  a = config_args.parse_args(arg, KEYS, "imagenet")
  config = base_config()
  config.data.name = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.augment = "inception"
  config.data.image_size = 224
  config.data.resize_method = "bicubic"  # The reference's interpolation.
  config.train.eval_batch_size = 1000  # 50,000 validation images in 50 batches.
  config.train.compute_dtype = "auto"  # bfloat16 on GPUs and TPUs, float32 on CPUs.
  config.train.checkpoint_every = 5000
  config.train.checkpoint_every_minutes = 30.0  # Also every 30 minutes (preemptible pods).
  if a["model"] in config_args.REGNET_MODELS:
    regnet_recipe(config, a["variant"], a["regularized"], config_args.MODEL_NAMES[a["model"]])
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


def regnet_recipe(
  config: ml_collections.ConfigDict,
  variant: str,
  regularized: bool,
  model_name: str = "nf_regnet",
) -> None:
  """NF-RegNet training recipe (paper Section 5.2, Table 3); always regularized as in the paper.

  ``model_name="bn_regnet"`` trains the BatchNorm counterpart with the same recipe.
  """
  if regularized:
    raise ConfigError(f"model={model_name} is always regularized (variant dropout, stochdepth 0.1)")
  config.model_name = model_name
  config.model = ml_collections.ConfigDict(
    {"variant": variant, "activation": "silu", "remat": False}
  )
  row = nfresnet.NF_REGNET_VARIANTS[variant]
  config.data.image_size = row.train_resolution
  config.data.eval_image_size = row.test_resolution
  config.optimizer.weight_decay = REGNET_WEIGHT_DECAY[variant]
  config.data.mixup_alpha = REGNET_RECIPE["mixup"]
  config.data.cutmix_alpha = REGNET_RECIPE["cutmix"]
  config.train.num_epochs = REGNET_RECIPE["epochs"]
  config.train.ema_decay = REGNET_RECIPE["ema"]
  config.optimizer.base_lr = REGNET_RECIPE["lr"]
  config.optimizer.scale_by_batch = False
  config.optimizer.end_lr = REGNET_RECIPE["end_lr"]


def get_sweep(arg: str | None = None) -> list[sweeps.SweepEntry]:
  """Sweeps of the paper at full scale: ``table1`` (200 runs), ``table2``, ``table3``, ..."""
  builders = {
    "table1": lambda: sweeps.table1(PAPER_DEPTHS, PAPER_SEEDS),
    "table2": lambda: sweeps.table2(50, sweeps.powers_of_two(1024, 4), epochs=TABLE2_EPOCHS),
    "depth": lambda: sweeps.depth_sweep(PAPER_DEPTHS),
    "activation": lambda: sweeps.activation_sweep(50),
    "meanshift": lambda: sweeps.meanshift_sweep(50),
    "table3": lambda: sweeps.table3(tuple(nfresnet.NF_REGNET_VARIANTS)),
  }
  return sweeps.select(arg, builders, "imagenet")
