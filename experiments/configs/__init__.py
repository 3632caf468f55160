"""Experiment configs (``get_config(arg)`` per file) and the shared base config.

Every config file starts from ``base_config()``, so all experiments have the
same fields; values derived from several fields (total steps, warm-up steps,
batch-scaled learning rate) are computed at run time by the builders in
``experiments.optim`` and never stored here.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """An invalid experiment configuration (bad name, value or combination)."""


def base_config() -> ml_collections.ConfigDict:
  """All experiment fields with defaults (the paper's ImageNet ResNet recipe, Section 5).

  Where the reference implementation's config differs from the paper (weight decay
  1e-4 vs 5e-5), the field keeps the paper's value; docs/paper_map.md lists both.

  Returns:
    An unlocked ConfigDict with sections ``model`` (constructor kwargs of
    ``model_name``), ``data`` (``experiments.data.default_data_config()``),
    ``train`` and ``optimizer``.
  """
  from experiments import data  # Deferred: configs stay importable without the data deps.

  config = ml_collections.ConfigDict()
  config.model_name = "nf_resnet"
  # stack_blocks: scan over each stage's blocks (NF-ResNets); remat: recompute each block's
  # activations in the backward pass. Both keep the numbers; config files declare the ones
  # their model takes, so --config.model.remat=True works (the config is locked).
  config.model = ml_collections.ConfigDict({"depth": 50, "stack_blocks": False, "remat": False})
  config.data = data.default_data_config()

  train = config.train = ml_collections.ConfigDict()
  train.batch_size = 1024  # Global batch over all devices and processes.
  train.num_steps = config_dict.placeholder(int)  # Wins over num_epochs when set.
  train.num_epochs = 90.0
  train.eval_batch_size = 1024
  train.eval_every = 0  # Steps; 0 evaluates only at the end.
  train.eval_every_epochs = config_dict.placeholder(float)  # Wins over eval_every when set.
  train.checkpoint_every = 1000  # Steps; a checkpoint is also written at the end.
  train.checkpoint_every_minutes = 0.0  # Also save when this long since the last; 0: off.
  train.keep_checkpoints = 3
  train.log_every = 100
  train.seed = 0
  train.compute_dtype = "float32"  # "bfloat16": bf16 activations, float32 parameters.
  # "auto": bfloat16 on GPU and TPU, float32 on CPU (experiments.builder.resolve_compute_dtype).
  train.label_smoothing = 0.1
  train.ema_decay = 0.0  # 0 disables the EMA of parameters (and BatchNorm statistics).
  train.ema_warmup = True  # decay min(ema_decay, (1 + t) / (10 + t)), as the reference.
  train.cross_replica_bn = False  # False: per-device BN statistics (the paper's baseline).
  train.distributed = False  # Call jax.distributed.initialize() (also when env vars ask).
  train.progress_bar = True
  train.grad_accum_steps = 1  # Micro-batches per device batch: one update from k passes.
  train.num_devices = 0  # Devices of the data mesh; 0: all, n: the first n / processes per process.
  train.profile_steps = ""  # "10:20": a jax.profiler trace of steps 10-19 in <workdir>/profile.
  train.peak_flops_per_device = 0.0  # The MFU's peak FLOP/s per device; 0: the device table.
  train.compilation_cache_dir = ""  # JAX's persistent compilation cache folder; "": off.

  opt = config.optimizer = ml_collections.ConfigDict()
  opt.name = "sgd"  # "sgd" or "adamw".
  opt.base_lr = 0.1
  opt.scale_by_batch = True  # lr = base_lr * batch_size / 256.
  opt.momentum = 0.9
  opt.nesterov = True
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-8
  opt.weight_decay = 5e-5
  opt.warmup_epochs = 5.0
  opt.warmup_steps = config_dict.placeholder(int)  # Wins over warmup_epochs when set.
  opt.warmup_fraction = config_dict.placeholder(float)  # Of total steps; then over epochs.
  opt.end_lr = 0.0
  opt.agc_clip = 0.0  # Adaptive gradient clipping threshold; 0 disables it.
  opt.agc_eps = 1e-3
  return config
