"""Dataset sources behind one random-access interface, and the registry that builds them.

A source holds one split in a fixed canonical order and returns
``{"image": uint8[H, W, C], "label": int64}`` per index. Sources also carry the per-channel
normalization constants of their dataset (``mean``, ``std``, in units of pixel / 255),
always taken from the training split: hard-coded for the file datasets and well-known TFDS
datasets (see ``catalog.INFOS`` and ``tfds_source.KNOWN_STATS``), computed at load time for
digits, synthetic data and other TFDS datasets. In-memory sources additionally offer a vectorized
``get_batch(indices) -> (images, labels)`` that the pipeline uses when present.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import ml_collections
import numpy as np

from experiments.data import augment, files, image_folder, tfds_source
from experiments.data.files import DatasetError

SPLITS = ("train", "validation", "test")
VALIDATION_SPLIT_SEED = 20210121  # Fixed: the held-out examples do not depend on train.seed.
AUGMENTS = ("none", "cifar", "inception")
DATA_DIR_ENV = "NFRESNET_DATA_DIR"

# Digits split: sklearn's train_test_split(test_size=360, stratify=labels, random_state=0)
# gives 1437 train / 360 test (20%, stratified by class).
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@runtime_checkable
class Source(Protocol):
  """Random access to one split in a fixed canonical order."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict: ...


class ArraySource:
  """A split held in memory as ``images uint8[N, H, W, C]`` and ``labels int64[N]``."""

  def __init__(
    self,
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
  ):
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
      raise ValueError(f"{name}: need uint8 images [N,H,W,C] and N labels, got {images.shape}")
    self.name = name
    self.images = images
    self.labels = labels.astype(np.int64)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in images.shape[1:])
    self.mean, self.std = tuple(mean), tuple(std)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": self.labels[index]}

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[len(indices), H, W, C]`` and labels for the given indices."""
    return self.images[indices], self.labels[indices]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 ``[N, H, W, C]`` images, in units of pixel / 255."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
  return tuple(float(m) for m in x.mean(0)), tuple(float(s) for s in x.std(0))


class SyntheticSource:
  """Deterministic synthetic images for tests and benchmarks; nothing held per example.

  Example ``i`` has label ``hash(seed, split, i) mod num_classes`` and image
  ``0.6 * template[label] + 0.4 * noise[hash(i) mod 64]``: class templates are smooth
  random patterns, so a model can learn the task, and memory does not grow with the
  number of examples.
  """

  NUM_NOISE = 64

  def __init__(self, cfg: ml_collections.ConfigDict, split: str):
    self.name = "synthetic"
    self.num_classes = int(cfg.num_classes)
    size, channels = int(cfg.image_size), int(cfg.channels)
    self.image_shape = (size, size, channels)
    self._length = int(cfg.num_train if split == "train" else cfg.num_test)
    seed = int(cfg.get("seed", 0))
    self._split_key = seed * 2 + ("train", "test").index(split)
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (self.num_classes, 4, 4, channels))
    self._templates = augment.resize_batch(coarse, size)
    self._noise = rng.uniform(0, 255, (self.NUM_NOISE, size, size, channels)).astype(np.float32)
    if split == "train":
      sample = self.get_batch(np.arange(min(self._length, 1024)))[0]
    else:
      sample = SyntheticSource(cfg, "train").get_batch(np.arange(min(cfg.num_train, 1024)))[0]
    self.mean, self.std = channel_stats(sample)

  def __len__(self) -> int:
    return self._length

  def _hashes(self, indices: np.ndarray) -> np.ndarray:
    return augment.example_keys(self._split_key, 0, indices)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels for the given indices (vectorized)."""
    h = self._hashes(np.asarray(indices))
    labels = (h % np.uint64(self.num_classes)).astype(np.int64)
    noise = (h >> np.uint64(32)) % np.uint64(self.NUM_NOISE)
    images = 0.6 * self._templates[labels] + 0.4 * self._noise[noise.astype(np.int64)]
    return np.round(images).astype(np.uint8), labels

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._length:
      raise IndexError(f"synthetic index {index} out of range [0, {self._length})")
    images, labels = self.get_batch(np.array([index]))
    return {"image": images[0], "label": labels[0]}


def _load_digits(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """scikit-learn's bundled 8x8 digits (1797 images, 0..16), as uint8 8x8x1."""
  from sklearn.datasets import load_digits  # noqa: PLC0415 (sklearn is slow to import)
  from sklearn.model_selection import train_test_split  # noqa: PLC0415

  bunch = load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int64)
  train_idx, test_idx = train_test_split(
    np.arange(len(labels)),
    test_size=DIGITS_TEST_SIZE,
    stratify=labels,
    random_state=DIGITS_SPLIT_SEED,
  )
  mean, std = channel_stats(images[np.sort(train_idx)])
  idx = np.sort(train_idx if split == "train" else test_idx)
  return ArraySource("digits", images[idx], labels[idx], 10, mean, std)


def _data_dir(config: ml_collections.ConfigDict) -> str:
  how = files.INFOS[config.name].how_to_get
  path = config.data_dir or os.environ.get(DATA_DIR_ENV)
  if not path:
    raise DatasetError(
      f"dataset {config.name!r} needs a data directory: set data.data_dir or ${DATA_DIR_ENV}; {how}"
    )
  if not os.path.isdir(path):
    raise DatasetError(f"data directory {path!r} for dataset {config.name!r} does not exist; {how}")
  return path


def _load_files(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  verify = bool(config.get("verify", True))
  images, labels, info = files.load_split(config.name, _data_dir(config), split, verify)
  return ArraySource(config.name, images, labels, info.num_classes, info.mean, info.std)


def _load_tfds(config: ml_collections.ConfigDict, split: str) -> Source:
  if not config.tfds_name:
    raise ValueError("data.name='tfds' needs data.tfds_name (e.g. 'mnist', 'imagenet2012')")
  return tfds_source.TfdsSource(
    config.tfds_name, split, data_dir=config.data_dir, download=bool(config.get("download", False))
  )


def _load_image_folder(config: ml_collections.ConfigDict, split: str) -> Source:
  root = config.data_dir or os.environ.get(DATA_DIR_ENV)
  if not root:
    raise DatasetError(
      f"dataset 'image_folder' needs a data directory: set data.data_dir or ${DATA_DIR_ENV}; "
      f"{image_folder.HOW_TO_GET}"
    )
  return image_folder.ImageFolderSource(root, split, *tfds_source.IMAGENET_STATS)


_LOADERS: dict[str, Callable[[ml_collections.ConfigDict, str], Source]] = {
  "synthetic": lambda config, split: SyntheticSource(config.synthetic, split),
  "digits": _load_digits,
  "mnist": _load_files,
  "fashion_mnist": _load_files,
  "cifar10": _load_files,
  "cifar100": _load_files,
  "tfds": _load_tfds,
  "image_folder": _load_image_folder,  # <data_dir>/<split>/<class>/*.JPEG, decoded per batch.
}
SOURCES = tuple(_LOADERS)
"""The dataset registry: every allowed ``data.name`` (file datasets' facts: ``catalog.INFOS``)."""
ARRAY_SOURCES = tuple(name for name in SOURCES if name not in ("tfds", "image_folder"))
"""Datasets that load without TFDS (synthetic, embedded digits and the file datasets)."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (a ValueError) naming the bad value when a data field is not allowed.

  The ``data`` part of ``experiments.schema.validate``, for callers of the pipeline
  that have no full experiment config.
  """
  from experiments import schema  # Deferred: the schema reads this module's tables.

  schema.check_section("data", config, schema.DATA_FIELDS)
  schema.check_data_values(config)


class SubsetSource:
  """The examples ``indices`` of another source (a validation split or the rest of train)."""

  def __init__(self, source: Source, indices: np.ndarray, name: str):
    self._source, self._indices = source, np.asarray(indices, np.int64)
    self.name = name
    self.num_classes = source.num_classes
    self.image_shape = source.image_shape
    self.mean, self.std = source.mean, source.std
    self.encoded = getattr(source, "encoded", False)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._source[int(self._indices[index])]

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the subset's examples ``indices``."""
    picked = self._indices[np.asarray(indices)]
    if hasattr(self._source, "get_batch"):
      return self._source.get_batch(picked)
    items = [self._source[int(i)] for i in picked]
    labels = np.array([item["label"] for item in items], np.int64)
    if self.encoded:
      return [item["image"] for item in items], labels
    return np.stack([np.asarray(item["image"]) for item in items]), labels


def validation_indices(num_train: int, num_validation: int) -> np.ndarray:
  """Sorted indices of the ``num_validation`` training examples held out for validation.

  A fixed permutation (``VALIDATION_SPLIT_SEED``), so every run holds out the same ones.
  """
  if not 0 < num_validation < num_train:
    raise ValueError(
      f"data.validation_examples={num_validation} must be in [1, {num_train - 1}] "
      f"(the training split has {num_train} examples), or 0 for no validation split"
    )
  order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(num_train)
  return np.sort(order[:num_validation])


def load_source(config: ml_collections.ConfigDict, split: str) -> Source:
  """Builds the source of ``split`` ("train", "validation" or "test") for ``config.data``.

  With ``data.validation_examples = V > 0``, "validation" is V examples held out of the
  training split (``validation_indices``) and "train" is the rest; with V = 0 there is
  no "validation" split.

  Raises:
    ValueError: unknown dataset name, split or augment (the message lists allowed values).
    DatasetError: missing or corrupt files (one line: what, where, how to get it).
  """
  check_config(config)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
  held_out = int(config.get("validation_examples", 0) or 0)
  if split == "test":
    return _LOADERS[config.name](config, split)
  if not held_out:
    if split == "validation":
      raise ValueError("the validation split needs data.validation_examples > 0")
    return _LOADERS[config.name](config, split)
  train = _LOADERS[config.name](config, "train")
  validation = validation_indices(len(train), held_out)
  if split == "validation":
    return SubsetSource(train, validation, f"{config.name}:validation")
  rest = np.setdiff1d(np.arange(len(train)), validation)
  return SubsetSource(train, rest, config.name)


def num_examples(source: Source) -> int:
  """Number of examples in the source's split."""
  return len(source)


def default_data_config() -> ml_collections.ConfigDict:
  """Every ``config.data`` field with its default (digits, 16 px, no augmentation)."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(
    {
      "name": "digits",  # One of SOURCES.
      "data_dir": placeholder(str),  # None: $NFRESNET_DATA_DIR (file sources), TFDS default.
      "download": False,  # TFDS only: allow tfds to download and prepare.
      "tfds_name": placeholder(str),  # TFDS only, e.g. "mnist" or "imagenet2012".
      "verify": True,  # Check known example counts and file checksums.
      "image_size": 16,  # Output side S (resized to S x S); 0: the stored size.
      "eval_image_size": placeholder(int),  # Evaluation side; None: image_size.
      "augment": "none",  # One of AUGMENTS.
      "crop_padding": 4,  # "cifar": zero padding before the random crop.
      # "inception": centre crop kept at evaluation; None: S / (S + 32), the reference's.
      "eval_crop_fraction": placeholder(float),
      "resize_method": "bilinear",  # One of RESIZE_METHODS ("bicubic": the reference's).
      # Training only: RandAugment level "NMM" (N layers of magnitude MM, e.g. "405"); None: off.
      "randaugment": placeholder(str),
      "validation_examples": 0,  # Held out of train as the "validation" split; 0 = none.
      "mixup_alpha": 0.0,  # 0 = off.
      "cutmix_alpha": 0.0,  # 0 = off.
      "worker_threads": 1,  # grain threads building batches (0 = in the caller's thread).
      "worker_processes": 0,  # grain worker processes (mp_prefetch); 0 = in this process.
      "prefetch_batches": 2,  # Batches built ahead of the consumer.
      "synthetic": {
        "num_train": 1024,
        "num_test": 256,
        "num_classes": 10,
        "image_size": 16,
        "channels": 3,
        "seed": 0,
      },
    }
  )
