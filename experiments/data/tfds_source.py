"""TFDS prepared datasets as random-access sources, through ``tfds.data_source``.

Needs no TensorFlow: ``tfds.data_source`` reads datasets prepared in the ``array_record``
file format (``array_record`` is installed with tensorflow-datasets) and decodes examples
with numpy. Preparing a dataset (``download=True``, or ``tfds build``) may need TensorFlow
for image encoding; a dataset prepared elsewhere can be copied into ``data_dir``.

Splits: "train" is TFDS "train"; "test" is TFDS "test", or "validation" when the dataset
has no test split (e.g. imagenet2012).
"""

from __future__ import annotations

import numpy as np

from experiments.data import catalog
from experiments.data.files import DatasetError

# Per-channel pixel statistics (pixel / 255) of the training split, for known datasets:
# the file datasets' values from ``catalog.INFOS``; ImageNet the widely published values.
# Other datasets: computed at load time from the first ``STATS_EXAMPLES`` training examples.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KNOWN_STATS = {
  **{name: (info.mean, info.std) for name, info in catalog.INFOS.items()},
  "imagenet2012": IMAGENET_STATS,
}
STATS_EXAMPLES = 1000
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def _builder(name: str, data_dir: str | None, download: bool):
  """The TFDS builder of a prepared dataset, or a one-line DatasetError."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only for TFDS sources)

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(
      f"TFDS dataset {name!r} is neither a registered TFDS name nor prepared in "
      f"data_dir={data_dir!r}"
    ) from None
  if download:
    builder.download_and_prepare(file_format="array_record")
  if not builder.is_prepared():
    raise DatasetError(
      f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: run "
      f"`tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'} "
      f"--file_format=array_record` or set data.download=True"
    )
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format not in RANDOM_ACCESS_FORMATS:
    raise DatasetError(
      f"TFDS dataset {name!r} in {builder.data_dir} is stored as {file_format}, which has no "
      f"random access: rebuild it with --file_format=array_record"
    )
  return builder


def _split_name(builder, split: str) -> str:
  splits = set(builder.info.splits)
  if split in splits:
    return split
  if split == "test" and "validation" in splits:
    return "validation"
  raise DatasetError(f"TFDS dataset {builder.name!r} has no {split!r} split (has {sorted(splits)})")


class TfdsSource:
  """One split of a prepared TFDS dataset with image and integer label features."""

  def __init__(self, name: str, split: str, data_dir: str | None = None, download: bool = False):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = _builder(name, data_dir, download)
    self.name = name
    self._image_key, self._label_key = builder.info.supervised_keys or ("image", "label")
    features = builder.info.features
    if self._image_key not in features or self._label_key not in features:
      raise DatasetError(
        f"TFDS dataset {name!r} lacks features {self._image_key!r}/{self._label_key!r}"
      )
    self.num_classes = int(features[self._label_key].num_classes)
    self.image_shape = tuple(features[self._image_key].shape)
    self._data = tfds.data_source(
      name, split=_split_name(builder, split), data_dir=data_dir, download=False
    )
    self.mean, self.std = KNOWN_STATS.get(name.split("/")[0].split(":")[0]) or self._stats(
      tfds, data_dir
    )

  def _stats(self, tfds, data_dir: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    train = tfds.data_source(self.name, split="train", data_dir=data_dir, download=False)
    count = min(len(train), STATS_EXAMPLES)
    channels = self.image_shape[-1]
    images = [np.asarray(train[i][self._image_key]).reshape(-1, channels) for i in range(count)]
    pixels = np.concatenate(images).astype(np.float64) / 255.0
    return tuple(float(m) for m in pixels.mean(0)), tuple(float(s) for s in pixels.std(0))

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict:
    example = self._data[index]
    image = np.asarray(example[self._image_key], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": np.int64(example[self._label_key])}
