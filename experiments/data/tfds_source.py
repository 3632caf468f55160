"""TFDS prepared datasets as random-access sources, through ``tfds.data_source``.

Needs no TensorFlow: ``tfds.data_source`` reads datasets prepared in the ``array_record``
file format (``array_record`` is installed with tensorflow-datasets) and decodes examples
with numpy. Preparing a dataset (``download=True``, or ``tfds build``) may need TensorFlow
for image encoding; a dataset prepared elsewhere can be copied into ``data_dir``.

Splits: "train" is TFDS "train"; "test" is TFDS "test", or "validation" when the dataset
has no test split (e.g. imagenet2012).

Images of variable size (an ``Image`` feature with a ``None`` dimension, e.g. imagenet2012)
are read undecoded (``tfds.decode.SkipDecoding``: the stored JPEG bytes, no TensorFlow
needed) and the source is ``encoded``: the pipeline decodes and crops them with Pillow
(``jpeg``). Fixed-size images (mnist, cifar10) are decoded by TFDS, as before.

Building imagenet2012 needs TensorFlow and the archives, downloaded by hand
(``IMAGENET_HINT``; ``data_dir`` defaults to ``~/tensorflow_datasets``); a class-per-folder
copy of the JPEGs is read by ``data.name = "image_folder"`` instead, with neither.
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
IMAGENET_HINT = (
  "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from https://image-net.org) in "
  "{data_dir}/downloads/manual, `pip install tensorflow`, then run `tfds build "
  "imagenet2012 --data_dir={data_dir} --file_format=array_record`; or use "
  "data.name='image_folder' on the extracted JPEGs (<data_dir>/train/<class>/*.JPEG)"
)
"""What to do when imagenet2012 is not prepared: it cannot be downloaded automatically."""


def _needs_manual_download(builder) -> bool:
  return bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))


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
  shown_dir = data_dir or "~/tensorflow_datasets"
  manual = _needs_manual_download(builder)
  if download and not (manual and builder.is_prepared()):
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as error:  # noqa: BLE001 (TFDS raises many kinds; all end here)
      if not manual:
        raise
      why = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
      raise DatasetError(
        f"TFDS dataset {name!r} cannot be prepared in {builder.data_dir} ({why}): it needs "
        f"archives downloaded by hand: {IMAGENET_HINT.format(data_dir=shown_dir)}"
      ) from None
  if not builder.is_prepared() and manual:
    raise DatasetError(
      f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and cannot be "
      f"downloaded automatically: {IMAGENET_HINT.format(data_dir=shown_dir)}"
    )
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

  def __init__(
    self,
    name: str,
    split: str,
    data_dir: str | None = None,
    download: bool = False,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
  ):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    self._args = (name, split, data_dir)
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
    image = features[self._image_key]
    self.encoded = isinstance(image, tfds.features.Image) and None in self.image_shape
    decoders = {self._image_key: tfds.decode.SkipDecoding()} if self.encoded else None
    self._data = tfds.data_source(
      name, split=_split_name(builder, split), data_dir=data_dir, download=False, decoders=decoders
    )
    self.mean, self.std = (
      stats or KNOWN_STATS.get(name.split("/")[0].split(":")[0]) or self._stats(tfds, data_dir)
    )

  def _stats(self, tfds, data_dir: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    train = tfds.data_source(self.name, split="train", data_dir=data_dir, download=False)
    count = min(len(train), STATS_EXAMPLES)
    channels = self.image_shape[-1]
    images = [np.asarray(train[i][self._image_key]).reshape(-1, channels) for i in range(count)]
    pixels = np.concatenate(images).astype(np.float64) / 255.0
    return tuple(float(m) for m in pixels.mean(0)), tuple(float(s) for s in pixels.std(0))

  def __getstate__(self) -> dict:  # Pickled into worker processes: reopened there.
    return {"args": self._args, "stats": (self.mean, self.std)}

  def __setstate__(self, state: dict) -> None:
    name, split, data_dir = state["args"]
    self.__init__(name, split, data_dir, stats=state["stats"])

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict:
    example = self._data[index]
    if self.encoded:
      return {"image": bytes(example[self._image_key]), "label": np.int64(example[self._label_key])}
    image = np.asarray(example[self._image_key], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": np.int64(example[self._label_key])}
