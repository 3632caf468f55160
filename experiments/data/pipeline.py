"""Training and evaluation batches: grain index pipelines, augmentation, sharding.

Training: ``ShuffledBatchIndices`` (a ``grain.MapDataset``) gives the source indices of
global batch ``k`` as a pure function of ``(seed, k)``: an endless stream of epochs, each a
numpy permutation seeded by ``(seed, epoch)``, cut into global batches of ``G``. A grain
``map_with_index`` turns indices into the batch of step ``k``. Process ``p`` of ``P`` takes
positions ``[p * G / P, (p + 1) * G / P)`` of every global batch, so the processes together see the
whole global batch, without overlap. Augmentation draws are keyed by ``(seed, k,
position in the global batch)`` (see ``augment.example_keys``), so a global batch is the
same whatever the process count (MixUp/CutMix excepted: they mix within the local batch).
Resuming at ``start_step=k`` therefore yields exactly batch ``k`` of an uninterrupted run.

Evaluation: one pass in canonical order over ``ceil(N / G)`` global batches; the tail of
the last one is zero padding with ``mask`` 0.

Batches are built by grain in ``config.worker_threads`` background threads,
``config.prefetch_batches`` ahead (``worker_threads = 0``: built on demand in the caller).
With ``config.worker_processes = W > 0``, W grain worker processes (``mp_prefetch``, started
with "spawn") each build every W-th batch, in their own ``worker_threads`` threads, and the
batches come back in step order through shared memory: a batch is the same for any W.

Sources of encoded images (``source.encoded``: JPEG bytes from ``ImageFolderSource`` or a
TFDS dataset of variable image size) are decoded, cropped and resized per example with
Pillow (``jpeg``), from the same crop boxes and draws as decoded images.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator

import grain
import ml_collections
import numpy as np
from absl import flags

from experiments.data import augment, jpeg, randaugment
from experiments.data.sources import Source, check_config


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of "
      f"process_count={process_count}"
    )
  return global_batch_size // process_count


class ShuffledBatchIndices(grain.MapDataset):
  """Element ``k``: the source indices of global batch ``k`` of an endless shuffled stream.

  The stream concatenates epochs; epoch ``e`` is the permutation
  ``np.random.default_rng([seed, e]).permutation(num_records)``. Element ``k`` holds stream
  positions ``[k * G, (k + 1) * G)``, so an epoch boundary may fall inside a batch.
  Permutations are computed vectorized (a few ms per million records) and the latest
  two are cached; grain's own per-element ``shuffle`` costs tens of microseconds per record
  in Python, too much for the host budget of small-image training.
  """

  def __init__(self, num_records: int, batch_size: int, seed: int):
    super().__init__()
    if num_records < 1:
      raise ValueError("cannot shuffle an empty source")
    self._num_records, self._batch_size, self._seed = num_records, batch_size, seed
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:  # Pickled into worker processes: no lock, no cache.
    return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._cache, self._lock = {}, threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize // self._batch_size

  def __str__(self) -> str:
    return f"ShuffledBatchIndices(n={self._num_records}, batch={self._batch_size})"

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self._seed % 2**64, epoch]).permutation(self._num_records)
        self._cache = {e: p for e, p in self._cache.items() if e == epoch - 1}
        self._cache[epoch] = perm
      return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    n = self._num_records
    positions = index * self._batch_size + np.arange(self._batch_size)
    epochs = positions // n
    out = np.empty(self._batch_size, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._permutation(int(epoch))[positions[sel] % n]
    return out


def _fetch(source: Source, indices: np.ndarray) -> tuple[np.ndarray | list, np.ndarray]:
  """Images (an array, or a list when sizes differ or they are encoded bytes) and int64
  labels of ``indices``."""
  if hasattr(source, "get_batch"):
    return source.get_batch(indices)
  items = [source[int(i)] for i in indices]
  labels = np.array([item["label"] for item in items], np.int64)
  if getattr(source, "encoded", False):
    return [item["image"] for item in items], labels
  images = [np.asarray(item["image"]) for item in items]
  if len({im.shape for im in images}) == 1:
    return np.stack(images), labels
  return images, labels


def _boxes(
  images: np.ndarray | list, make: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
  heights = np.array([im.shape[0] for im in images], np.float64)
  widths = np.array([im.shape[1] for im in images], np.float64)
  return make(heights, widths)


def _crop_resize_each(
  images: np.ndarray | list, boxes: np.ndarray, size: int, method: str
) -> np.ndarray:
  if isinstance(images, np.ndarray):
    return augment.crop_resize(images, boxes, size, method)
  pairs = zip(images, boxes, strict=True)
  return np.concatenate(
    [augment.crop_resize(im[None], box[None], size, method) for im, box in pairs]
  )


def _resize_each(images: np.ndarray | list, size: int, method: str) -> np.ndarray:
  if isinstance(images, np.ndarray):
    return augment.resize_batch(images, size, method)
  return np.concatenate([augment.resize_batch(im[None], size, method) for im in images])


def output_size(config: ml_collections.ConfigDict, source: Source, train: bool = True) -> int:
  """The image side: ``config.image_size`` (evaluation: ``config.eval_image_size`` when set),
  or the stored size of a square fixed-size source when 0/None."""
  if not train and config.get("eval_image_size"):
    return int(config.eval_image_size)
  if config.image_size:
    return int(config.image_size)
  height, width = source.image_shape[:2]
  if height is None or height != width:
    raise ValueError(
      f"data.image_size must be set for {source.name!r} (stored shape {source.image_shape})"
    )
  return int(height)


EVAL_CROP_PADDING = 32  # The reference crops S / (S + 32) of the short side (224 / 256).


def eval_crop_fraction(config: ml_collections.ConfigDict, size: int) -> float:
  """``data.eval_crop_fraction``, or ``size / (size + 32)`` when unset (the reference's)."""
  fraction = config.get("eval_crop_fraction")
  return float(fraction) if fraction else size / (size + EVAL_CROP_PADDING)


def process_images(
  images: np.ndarray | list,
  config: ml_collections.ConfigDict,
  source: Source,
  keys: np.ndarray | None,
) -> np.ndarray:
  """Resizes, augments (when ``keys`` is given) and normalizes a batch.

  Training: the ``augment`` crop/flip, then RandAugment when ``randaugment`` is set, on each
  example before normalization (MixUp/CutMix come after, in ``_train_batch``; the NFNet
  reference applies RandAugment to the mixed images instead).

  Args:
    images: uint8 ``[B, H, W, C]`` or a list of ``[H_i, W_i, C]``.
    config: the data config.
    source: gives the normalization constants.
    keys: per-example keys for training augmentation; None for evaluation.

  Returns:
    float32 ``[B, S, S, C]`` normalized per channel.
  """
  size = output_size(config, source, train=keys is not None)
  method = config.get("resize_method", "bilinear")
  if getattr(source, "encoded", False):
    x = _decode_images(images, config, size, method, keys)
  elif config.augment == "inception" and keys is not None:
    u = augment.uniforms(keys, augment.NUM_INCEPTION_DRAWS)
    boxes = _boxes(images, lambda h, w: augment.inception_boxes(u, h, w))
    x = augment.flip_where(_crop_resize_each(images, boxes, size, method), u[:, -1] < 0.5)
  elif config.augment == "inception":
    frac = eval_crop_fraction(config, size)
    boxes = _boxes(images, lambda h, w: augment.centre_boxes(h, w, frac))
    x = _crop_resize_each(images, boxes, size, method)
  else:
    x = _resize_each(images, size, method)
    if config.augment == "cifar" and keys is not None:
      x = augment.pad_crop_flip(x, augment.uniforms(keys, 3), config.get("crop_padding", 4))
  if config.get("randaugment") is not None and keys is not None:
    x = _rand_augment(x, keys, config.randaugment)
  return augment.normalize(x, source.mean, source.std)


RANDAUGMENT_SALT = np.uint64(0x52414E4441554721)
"""XOR-ed into the example keys for RandAugment's draws, apart from the crop's and flip's."""


def encoded_boxes(
  images: list, config: ml_collections.ConfigDict, size: int, keys: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
  """Crop boxes ``[B, 4] = (y0, x0, h, w)`` of encoded images, and the flips (or None).

  The boxes of ``process_images``' decoded path, from the image sizes in the headers:
  Inception crops and flips from the same draws (training), the centre crop (evaluation),
  otherwise the whole image.
  """
  heights, widths = jpeg.image_sizes(images)
  if config.augment == "inception" and keys is not None:
    u = augment.uniforms(keys, augment.NUM_INCEPTION_DRAWS)
    return augment.inception_boxes(u, heights, widths), u[:, -1] < 0.5
  if config.augment == "inception":
    return augment.centre_boxes(heights, widths, eval_crop_fraction(config, size)), None
  return np.stack([0 * heights, 0 * widths, heights, widths], axis=1), None


def _decode_images(
  images: list,
  config: ml_collections.ConfigDict,
  size: int,
  method: str,
  keys: np.ndarray | None,
) -> np.ndarray:
  """Encoded images decoded, cropped, resized and flipped (Pillow): uint8 ``[B, S, S, 3]``."""
  boxes, flips = encoded_boxes(images, config, size, keys)
  x = jpeg.decode_crop_resize_batch(images, boxes, size, method, flips)
  if config.augment == "cifar" and keys is not None:
    x = augment.pad_crop_flip(x, augment.uniforms(keys, 3), config.get("crop_padding", 4))
  return x


def _rand_augment(x: np.ndarray, keys: np.ndarray, level: str) -> np.ndarray:
  """RandAugment ``level`` on float images in [0, 255]: clipped and truncated to uint8 (the
  reference's ``tf.cast``), augmented per example (``randaugment.rand_augment``)."""
  layers, magnitude = randaugment.parse_level(level)
  draws = randaugment.NUM_DRAWS(layers)
  u = augment.uniforms(np.asarray(keys, np.uint64) ^ RANDAUGMENT_SALT, draws)
  return randaugment.rand_augment(np.clip(x, 0, 255).astype(np.uint8), u, layers, magnitude)


def _train_batch(
  source: Source,
  config: ml_collections.ConfigDict,
  seed: int,
  process_index: int,
  local: int,
  step: int,
  global_indices: np.ndarray,
) -> dict:
  raw = local * augment.mix_inputs_per_output(config.mixup_alpha, config.cutmix_alpha)
  start = process_index * raw
  indices = np.asarray(global_indices[start : start + raw])
  images, labels = _fetch(source, indices)
  keys = augment.example_keys(seed, step, np.arange(start, start + raw))
  x = process_images(images, config, source, keys)
  if raw > local:  # MixUp/CutMix: 2 raw examples per output example.
    rng = np.random.default_rng([seed, step, process_index, 0x6D6978])
    x, soft = augment.mix_batch(
      x, labels, source.num_classes, rng, config.mixup_alpha, config.cutmix_alpha
    )
    return {"image": x, "label": soft}
  return {"image": x, "label": labels.astype(np.int32)}


def _iterate(ds: grain.MapDataset, start: int, config: ml_collections.ConfigDict) -> Iterator:
  """Elements ``start, start + 1, ...`` of ``ds``, built in grain worker threads/processes."""
  threads = int(config.get("worker_threads", 1))
  processes = int(config.get("worker_processes", 0) or 0)
  prefetch = max(int(config.get("prefetch_batches", 2)), 1)
  if threads <= 0 and processes <= 0:
    return (ds[k] for k in range(start, len(ds)))
  options = grain.ReadOptions(num_threads=max(threads, 0), prefetch_buffer_size=prefetch)
  stream = ds.slice(slice(start, None)).to_iter_dataset(options)
  if processes > 0:
    if not flags.FLAGS.is_parsed():  # grain's process pool reads its absl flags' defaults.
      flags.FLAGS.mark_as_parsed()
    stream = stream.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=prefetch)
    )
  return iter(stream)


def train_batches(
  source: Source,
  config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict]:
  """Infinite iterator over this process's shard of each global training batch.

  Args:
    source: the training split.
    config: the ``config.data`` section.
    global_batch_size: examples per step over all processes.
    seed: data seed (shuffle order and augmentation).
    start_step: first step to yield (resume).
    process_index: this process's index.
    process_count: number of processes.

  Yields:
    ``{"image": float32[B, S, S, C], "label": int32[B]}`` with ``B = G / P``; with
    MixUp/CutMix, ``label`` is ``float32[B, num_classes]`` soft targets summing to 1, and
    every step reads ``2G`` raw examples (``augment.mix_batch``, as the reference).
  """
  check_config(config)
  local = _local_batch_size(global_batch_size, process_index, process_count)
  raw_per_output = augment.mix_inputs_per_output(config.mixup_alpha, config.cutmix_alpha)
  indices = ShuffledBatchIndices(len(source), raw_per_output * global_batch_size, seed)

  def make(step: int, global_indices: np.ndarray) -> dict:
    return _train_batch(source, config, seed, process_index, local, step, global_indices)

  return _iterate(indices.map_with_index(make), start_step, config)


def _eval_batch(source: Source, config: ml_collections.ConfigDict, positions: np.ndarray) -> dict:
  valid = positions[positions < len(source)]
  local = len(positions)
  size, channels = output_size(config, source, train=False), source.image_shape[-1]
  image = np.zeros((local, size, size, channels), np.float32)
  label = np.zeros((local,), np.int32)
  mask = np.zeros((local,), np.float32)
  if len(valid):
    images, labels = _fetch(source, valid)
    image[: len(valid)] = process_images(images, config, source, None)
    label[: len(valid)] = labels
    mask[: len(valid)] = 1.0
  return {"image": image, "label": label, "mask": mask}


def eval_batches(
  source: Source,
  config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict]:
  """One pass over ``source`` in canonical order; every example seen once over processes.

  All processes yield the same number of batches, ``ceil(N / G)``. Global batch ``j``
  holds examples ``[j * G, (j + 1) * G)``, process ``p`` the ``p``-th slice of it; positions
  past the end are zero images with label 0 and mask 0.

  Yields:
    ``{"image": float32[B, S, S, C], "label": int32[B], "mask": float32[B]}``.
  """
  check_config(config)
  local = _local_batch_size(global_batch_size, process_index, process_count)
  num_batches = math.ceil(len(source) / global_batch_size)
  offset = process_index * local

  def make(batch: int) -> dict:
    positions = batch * global_batch_size + offset + np.arange(local)
    return _eval_batch(source, config, positions)

  ds = grain.MapDataset.range(num_batches).map(make)
  return _iterate(ds, 0, config)
