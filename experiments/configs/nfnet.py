"""The NFNet ImageNet recipe of Brock, De, Smith & Simonyan (arXiv 2102.06171): NFNet-F0..F7.

Reproduces: the NFNet-F0 ... F7 ImageNet runs of the authors' reference config
(deepmind-research ``nfnets/experiment_nfnets.py``), whose README reports 83.6%
top-1 for F0 and 84.7% for F1 (no SAM).

Arguments (``--config=experiments/configs/nfnet.py:ARGS``, comma-separated):
``variant=F0..F7`` or ``F0+..F7+`` (default F0), ``smoke`` (F0 at width 1/16
with groups of 8 channels, synthetic 16 px data, 2 steps).

Recipe (all from the reference config):
- model: ``nfresnet.NFNet`` with the reference's GELU (``jax.nn.gelu``'s tanh
  approximation, ``activation="gelu_tanh"``), alpha 0.2, squeeze-excite ratio 0.5,
  stochastic depth 0.25 and the variant's dropout; training and evaluation
  resolutions from ``nfresnet.NFNET_VARIANTS`` (``data.image_size``,
  ``data.eval_image_size``), bicubic resizing of the Inception crops and of the
  S / (S + 32) centre crop at evaluation;
- optimizer: Nesterov SGD (momentum 0.9), batch 4096, lr 0.1 * batch / 256 (1.6),
  360 epochs, 5 warm-up epochs then cosine to 0, weight decay 2e-5 on weights
  only, adaptive gradient clipping (AGC) at 0.01 with eps 1e-3 on every
  parameter except the final classifier (``experiments.optim.is_clipped``);
- regularization: label smoothing 0.1, MixUp (0.2) and CutMix (1.0) on half of
  each batch each, RandAugment (``data.randaugment``, the reference's
  ``cutmix_mixup_randaugment_NMM``: 4 layers of magnitude 5 for F0, "405"; 10 for
  F1-F2, "410"; 15 for F3-F7, "415"; levels from ``NFNET_VARIANTS``), EMA of the
  parameters with decay 0.99999 and the reference's warm-up;
- bfloat16 activations with float32 parameters, as the reference.
Steps, warm-up steps and the batch-scaled learning rate are derived at run time
(``experiments.optim.make_schedule``), so overrides stay consistent.

Differences: RandAugment runs per example before MixUp/CutMix (the reference,
``augment_before_mix=False``, augments the mixed images; see
``experiments.data.randaugment``). Not implemented: SAM (the released F6); the
reference also AGC-clips the classifier bias, which ``is_clipped`` leaves out with
the rest of the classifier.

Command::

  python -m experiments.main --config=experiments/configs/nfnet.py:variant=F0 \
    --workdir=/ckpt/nfnet_f0 --config.data.data_dir=/data/tfds

Hardware: the paper used TPU v3 pods; data-parallel over every local device, the
batch must divide by the device count. Expected result: F0 ~83.6% top-1 (reference
README); not run at this scale here.
"""

from __future__ import annotations

import ml_collections

import nfresnet
from experiments.configs import args as config_args
from experiments.configs import base_config
from experiments.configs.args import Key, flag

KEYS = {
  "variant": Key(str, tuple(nfresnet.NFNET_VARIANTS), "F0"),
  "smoke": flag(),
}
NFNET_RECIPE = dict(
  batch_size=4096,
  base_lr=0.1,
  epochs=360.0,
  warmup_epochs=5.0,
  weight_decay=2e-5,
  agc_clip=0.01,
  agc_eps=1e-3,
  ema=0.99999,
  mixup=0.2,
  cutmix=1.0,
  stochdepth_rate=0.25,
)
"""The reference NFNet config (deepmind-research ``nfnets/experiment_nfnets.py``)."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The NFNet recipe for ``variant=F0..F7`` (see the module docstring)."""
  a = config_args.parse_args(arg, KEYS, "nfnet")
  variant = a["variant"]
  row = nfresnet.NFNET_VARIANTS[variant]
  config = base_config()
  config.model_name = "nfnet"
  config.model = ml_collections.ConfigDict(
    {
      "variant": variant,
      "activation": "gelu_tanh",  # The reference's jax.nn.gelu: the tanh approximation.
      "alpha": config_args.NF_ALPHA,
      "se_ratio": 0.5,
      "stochdepth_rate": NFNET_RECIPE["stochdepth_rate"],
      "skip_gain_init": config_args.NF_SKIP_GAIN_INIT,
      "remat": False,  # True: recompute each block's activations in the backward pass.
    }
  )
  data = config.data
  data.name = "tfds"
  data.tfds_name = "imagenet2012"
  data.augment = "inception"
  data.image_size = row.train_resolution
  data.eval_image_size = row.test_resolution
  data.resize_method = "bicubic"  # The reference's interpolation.
  data.mixup_alpha = NFNET_RECIPE["mixup"]
  data.cutmix_alpha = NFNET_RECIPE["cutmix"]
  data.randaugment = f"{row.randaugment_layers}{row.randaugment_magnitude:02d}"  # F0: "405".
  train = config.train
  train.batch_size = NFNET_RECIPE["batch_size"]
  train.eval_batch_size = 1000  # 50,000 validation images in 50 batches.
  train.num_epochs = NFNET_RECIPE["epochs"]
  train.ema_decay = NFNET_RECIPE["ema"]
  train.compute_dtype = "bfloat16"
  train.checkpoint_every = 5000
  opt = config.optimizer
  opt.name = "sgd"
  opt.base_lr = NFNET_RECIPE["base_lr"]
  opt.scale_by_batch = True  # 0.1 * 4096 / 256 = 1.6.
  opt.nesterov = True
  opt.warmup_epochs = NFNET_RECIPE["warmup_epochs"]
  opt.end_lr = 0.0
  opt.weight_decay = NFNET_RECIPE["weight_decay"]
  opt.agc_clip = NFNET_RECIPE["agc_clip"]
  opt.agc_eps = NFNET_RECIPE["agc_eps"]
  if a["smoke"]:
    config_args.apply_smoke(config)
  return config
