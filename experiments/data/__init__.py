"""Data pipeline of the nfresnet experiments: sources, augmentation and batching.

Usage::

  from experiments import data

  cfg = data.default_data_config()            # digits, 16 px, no augmentation
  cfg.augment = "cifar"
  train = data.load_source(cfg, "train")
  batches = data.train_batches(train, cfg, global_batch_size=256, seed=0)
  batch = next(batches)                       # {"image": f32[256,16,16,1], "label": i32[256]}
"""

from experiments.data.files import DatasetError
from experiments.data.pipeline import eval_batches, train_batches
from experiments.data.sources import (
  ARRAY_SOURCES,
  AUGMENTS,
  SOURCES,
  ArraySource,
  Source,
  SyntheticSource,
  default_data_config,
  load_source,
  num_examples,
)

__all__ = [
  "ARRAY_SOURCES",
  "AUGMENTS",
  "SOURCES",
  "ArraySource",
  "DatasetError",
  "Source",
  "SyntheticSource",
  "default_data_config",
  "eval_batches",
  "load_source",
  "num_examples",
  "train_batches",
]
