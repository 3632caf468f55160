"""Tests of the encoded-image input: Pillow crops, image folders, worker processes, hints."""

import itertools

import numpy as np
import pytest

from experiments import data
from experiments.data import augment, jpeg, pipeline, tfds_source

NUM_CLASSES, PER_CLASS = 3, 4  # 12 images.


def _natural(rng, height, width):
  """A smooth random image with a little noise: JPEG-friendly, like a photograph."""
  coarse = rng.uniform(0, 255, (1, 4, 5, 3))
  base = augment.resize_batch(coarse, max(height, width))[0][:height, :width]
  return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """``<root>/{train,val}/c<k>/*.JPEG``: 12 training images of about 40 x 30 px, 6 test."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for split, count in (("train", PER_CLASS), ("val", 2)):
    for k in range(NUM_CLASSES):
      (root / split / f"c{k}").mkdir(parents=True)
      for i in range(count):
        image = _natural(rng, 30 + i, 40 - 2 * k)
        (root / split / f"c{k}" / f"{i:03d}.JPEG").write_bytes(jpeg.encode(image, 95))
  (root / "train" / "c0" / "notes.txt").write_text("not an image")
  return root


def _config(root, **overrides):
  config = data.default_data_config()
  defaults = dict(name="image_folder", data_dir=str(root), augment="inception", image_size=24)
  config.update({**defaults, **overrides})
  return config


def _take(iterator, count):
  batches = list(itertools.islice(iterator, count))
  if hasattr(iterator, "close"):
    iterator.close()
  return [{k: np.array(v) for k, v in batch.items()} for batch in batches]


def test_image_folder_source(folder, tmp_path):
  train = data.load_source(_config(folder), "train")
  assert (len(train), train.num_classes, train.classes) == (12, 3, ["c0", "c1", "c2"])
  assert train.encoded and train.image_shape == (None, None, 3)
  np.testing.assert_array_equal(train.labels, np.repeat(np.arange(3), 4))
  item = train[5]
  assert isinstance(item["image"], bytes) and int(item["label"]) == 1
  assert jpeg.image_size(item["image"]) == (31, 38)
  test = data.load_source(_config(folder), "test")  # "val" stands in for "test".
  assert len(test) == 6 and test.num_classes == 3
  assert train.mean == tfds_source.IMAGENET_STATS[0]
  assert "image_folder" not in data.ARRAY_SOURCES and "image_folder" in data.SOURCES


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda tmp: tmp / "missing", "image folder '.*missing' does not exist"),
    (lambda tmp: tmp, "no directory .*train"),
    (lambda tmp: (tmp / "train").mkdir() or tmp, "has no class folders"),
    (lambda tmp: (tmp / "train" / "a").mkdir(parents=True) or tmp, "train' has no images"),
  ],
)
def test_bad_image_folders_are_one_line(tmp_path, make, match):
  root = make(tmp_path)
  with pytest.raises(data.DatasetError, match=match) as error:
    data.load_source(_config(root), "train")
  assert "\n" not in str(error.value) and str(root) in str(error.value)


def test_image_folder_needs_a_directory(monkeypatch):
  monkeypatch.delenv("NFRESNET_DATA_DIR", raising=False)
  with pytest.raises(data.DatasetError, match="'image_folder' needs a data directory"):
    config = _config("unused")
    config.data_dir = None
    data.load_source(config, "train")


def test_crop_boxes_match_the_numpy_path(folder):
  """Same draws, same boxes: the Pillow path samples the numpy Inception crop's boxes."""
  source = data.load_source(_config(folder), "train")
  encoded = [source[i]["image"] for i in range(len(source))]
  decoded = [jpeg.decode(e) for e in encoded]
  config = _config(folder)
  for step in range(20):
    keys = augment.example_keys(7, step, np.arange(len(encoded)))
    boxes, flips = pipeline.encoded_boxes(encoded, config, 24, keys)
    u = augment.uniforms(keys, augment.NUM_INCEPTION_DRAWS)
    expected = pipeline._boxes(decoded, lambda h, w: augment.inception_boxes(u, h, w))
    np.testing.assert_array_equal(boxes, expected)
    np.testing.assert_array_equal(flips, u[:, -1] < 0.5)
  eval_boxes, no_flips = pipeline.encoded_boxes(encoded, _config(folder), 24, None)
  assert no_flips is None
  np.testing.assert_allclose(eval_boxes[:, 2], np.minimum(*jpeg.image_sizes(encoded)) * 24 / 56)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [16, 32])
def test_pillow_pixels_close_to_numpy_on_the_same_box(folder, method, size):
  source = data.load_source(_config(folder), "train")
  encoded = [source[i]["image"] for i in range(len(source))]
  keys = augment.example_keys(3, 1, np.arange(len(encoded)))
  boxes, _ = pipeline.encoded_boxes(encoded, _config(folder), size, keys)
  ours = jpeg.decode_crop_resize_batch(encoded, boxes, size, method).astype(np.float32)
  ref = np.concatenate(
    [
      augment.crop_resize(jpeg.decode(e)[None], box[None], size, method)
      for e, box in zip(encoded, boxes, strict=True)
    ]
  )
  diff = np.abs(ours - np.clip(ref, 0, 255))
  assert diff.mean() < 1.5 and diff.max() < 12  # Resampling and rounding differences.


def test_dct_scale_keeps_the_crop_resolution():
  assert [jpeg.dct_scale(side, 224) for side in (100, 447, 448, 900, 1792, 4000)] == [
    1,
    1,
    2,
    4,
    8,
    8,
  ]
  rng = np.random.default_rng(1)
  big = jpeg.encode(_natural(rng, 256, 320))
  box = np.array([0, 0, 256, 320])
  drafted = jpeg.decode_crop_resize(big, box, 32)  # Decoded at 1/8 scale.
  full = augment.crop_resize(jpeg.decode(big)[None], box[None], 32)[0]
  assert np.abs(drafted - full).mean() < 1.5


def test_same_batches_with_0_and_2_workers_and_resume(folder):
  config = _config(folder, worker_threads=0)
  source = data.load_source(config, "train")
  inline = _take(data.train_batches(source, config, global_batch_size=4, seed=5), 5)
  assert inline[0]["image"].shape == (4, 24, 24, 3) and inline[0]["image"].dtype == np.float32
  again = _take(data.train_batches(source, config, global_batch_size=4, seed=5), 5)
  config.worker_processes, config.worker_threads = 2, 1
  workers = _take(data.train_batches(source, config, global_batch_size=4, seed=5), 5)
  resumed = _take(data.train_batches(source, config, global_batch_size=4, seed=5, start_step=3), 1)
  for a, b, c in zip(inline, again, workers, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["image"], c["image"])
    np.testing.assert_array_equal(a["label"], c["label"])
  np.testing.assert_array_equal(resumed[0]["image"], inline[3]["image"])
  assert not np.array_equal(inline[0]["image"], inline[1]["image"])
  other = _take(data.train_batches(source, _config(folder), global_batch_size=4, seed=6), 1)
  assert not np.array_equal(other[0]["image"], inline[0]["image"])


def test_two_processes_get_disjoint_halves(folder):
  config = _config(folder, augment="none", worker_threads=0)
  source = data.load_source(config, "train")
  whole = _take(data.train_batches(source, config, global_batch_size=4, seed=2), 3)
  halves = [
    _take(
      data.train_batches(
        source, config, global_batch_size=4, seed=2, process_index=p, process_count=2
      ),
      3,
    )
    for p in range(2)
  ]
  for step in range(3):
    first, second = halves[0][step], halves[1][step]
    assert first["image"].shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(
      np.concatenate([first["image"], second["image"]]), whole[step]["image"]
    )
  # Three steps of 4 = one epoch of 12: the halves are disjoint and cover it.
  indices = pipeline.ShuffledBatchIndices(len(source), 4, seed=2)
  seen = [np.concatenate([indices[k][2 * p : 2 * p + 2] for k in range(3)]) for p in range(2)]
  assert not set(seen[0]) & set(seen[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(12))


def test_eval_batches_centre_crop(folder):
  config = _config(folder, worker_threads=0)
  source = data.load_source(config, "test")
  batches = list(data.eval_batches(source, config, global_batch_size=4))
  assert len(batches) == 2 and batches[0]["image"].shape == (4, 24, 24, 3)
  np.testing.assert_array_equal(batches[1]["mask"], [1, 1, 0, 0])
  raw = jpeg.decode(source[0]["image"])
  box = augment.centre_boxes(*np.array([raw.shape[:2]]).T, 24 / 56)
  ref = augment.normalize(augment.crop_resize(raw[None], box, 24), source.mean, source.std)
  assert np.abs(batches[0]["image"][0] - ref[0]).mean() < 0.05


def test_imagenet_hint_is_one_line(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  config = data.default_data_config()
  config.update(dict(name="tfds", tfds_name="imagenet2012", data_dir=str(tmp_path)))
  with pytest.raises(data.DatasetError, match="cannot be downloaded automatically") as error:
    data.load_source(config, "train")
  message = str(error.value)
  assert "\n" not in message and "pip install tensorflow" in message
  assert f"{tmp_path}/downloads/manual" in message and "image_folder" in message


def test_worker_processes_field_is_checked(folder):
  with pytest.raises(ValueError, match="data.worker_processes=-1 is not allowed"):
    data.train_batches(
      data.load_source(_config(folder), "train"),
      _config(folder, worker_processes=-1),
      global_batch_size=4,
      seed=0,
    )


def test_validation_split_of_an_image_folder(folder):
  config = _config(folder, validation_examples=4, worker_threads=0)
  validation = data.load_source(config, "validation")
  assert len(validation) == 4 and validation.encoded
  batch = next(data.eval_batches(validation, config, global_batch_size=4))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["mask"].sum() == 4
