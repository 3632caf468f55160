"""Tests of experiments/data sources: file readers on generated files, registry, real data."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from experiments import data
from experiments.data import files


def _config(name, data_dir=None, **overrides):
  config = data.default_data_config()
  config.name = name
  config.data_dir = None if data_dir is None else str(data_dir)
  config.update(overrides)
  return config


def _write_idx(path, array, compress=True):
  """IDX as in the original distribution: 0, 0, 0x08, ndim, big-endian dims, bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
  if compress:
    with gzip.open(path, "wb") as f:
      f.write(raw)
  else:
    path.write_bytes(raw)


def _cifar_rows(images, labels, coarse=None):
  """Official binary records: label byte(s), then R, G, B planes of 32x32 row-major."""
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  heads = [labels[:, None]] if coarse is None else [coarse[:, None], labels[:, None]]
  return np.concatenate(heads + [planes], axis=1).astype(np.uint8)


def _random_images(rng, n, shape):
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.fixture
def mnist_dir(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "mnist"
  folder.mkdir()
  arrays = {}
  for split, (img, lab), n in (
    ("train", files.IDX_NAMES["train"], 7),
    ("test", files.IDX_NAMES["test"], 3),
  ):
    x, y = _random_images(rng, n, (28, 28)), rng.integers(0, 10, n).astype(np.uint8)
    _write_idx(folder / f"{img}.gz", x)
    compress = split == "train"  # Test labels: a plain IDX file.
    _write_idx(folder / (lab + ".gz" if compress else lab), y, compress=compress)
    arrays[split] = (x, y)
  return tmp_path, arrays


def test_idx_files_read_back_exactly(mnist_dir):
  root, arrays = mnist_dir
  for split in ("train", "test"):
    source = data.load_source(_config("mnist", root, verify=False), split)
    x, y = arrays[split]
    assert len(source) == len(y) and data.num_examples(source) == len(y)
    assert source.image_shape == (28, 28, 1) and source.num_classes == 10
    np.testing.assert_array_equal(source.images[..., 0], x)
    np.testing.assert_array_equal(source.labels, y)
    assert source[1]["image"].shape == (28, 28, 1) and int(source[1]["label"]) == y[1]


def test_generated_files_under_official_names_fail_checksum(mnist_dir):
  root, _ = mnist_dir
  with pytest.raises(data.DatasetError, match="corrupt or not the official file") as err:
    data.load_source(_config("mnist", root), "train")
  assert "\n" not in str(err.value) and "yann.lecun.com" in str(err.value)


@pytest.mark.parametrize(
  "payload, message",
  [
    (b"\x00\x00\x09\x01" + struct.pack(">I", 2) + b"ab", "not an IDX file of unsigned bytes"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "IDX header says shape"),
  ],
)
def test_bad_idx_files(tmp_path, payload, message):
  path = tmp_path / "t10k-labels-idx1-ubyte"
  path.write_bytes(payload)
  with pytest.raises(data.DatasetError, match=message):
    files.read_idx(str(path))
  (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b\x08garbage")
  with pytest.raises(data.DatasetError, match="cannot read IDX file"):
    files.read_idx(str(tmp_path / "broken.gz"))


def test_cifar10_binary_subset_and_official_sets(tmp_path):
  rng = np.random.default_rng(1)
  x, y = _random_images(rng, 5, (32, 32, 3)), rng.integers(0, 10, 5)
  _cifar_rows(x[:3], y[:3]).tofile(tmp_path / "data_batch_a.bin")
  _cifar_rows(x[3:], y[3:]).tofile(tmp_path / "data_batch_b.bin")
  _cifar_rows(x[:2], y[:2]).tofile(tmp_path / "test_batch_small.bin")
  train = data.load_source(_config("cifar10", tmp_path), "train")  # Unknown names: no counts.
  np.testing.assert_array_equal(train.images, x)
  np.testing.assert_array_equal(train.labels, y)
  assert train.image_shape == (32, 32, 3)
  assert len(data.load_source(_config("cifar10", tmp_path), "test")) == 2
  # One official name present: the complete official set is required.
  _cifar_rows(x, y).tofile(tmp_path / "data_batch_1.bin")
  with pytest.raises(data.DatasetError, match="lacks data_batch_2.bin, data_batch_3.bin"):
    data.load_source(_config("cifar10", tmp_path), "train")
  for i in range(2, 6):
    _cifar_rows(x, y).tofile(tmp_path / f"data_batch_{i}.bin")
  (tmp_path / "data_batch_a.bin").unlink()
  (tmp_path / "data_batch_b.bin").unlink()
  with pytest.raises(data.DatasetError, match="hold 25 examples, expected 50000"):
    data.load_source(_config("cifar10", tmp_path), "train")
  assert len(data.load_source(_config("cifar10", tmp_path, verify=False), "train")) == 25


def test_cifar_binary_truncated(tmp_path):
  (tmp_path / "test_batch.bin").write_bytes(bytes(3073 + 5))
  with pytest.raises(data.DatasetError, match="not a whole number of 3073-byte records"):
    data.load_source(_config("cifar10", tmp_path), "test")


def test_cifar100_binary_uses_fine_labels(tmp_path):
  rng = np.random.default_rng(2)
  x, fine, coarse = _random_images(rng, 4, (32, 32, 3)), np.array([99, 0, 57, 3]), np.arange(4)
  folder = tmp_path / "cifar-100-binary"
  folder.mkdir()
  _cifar_rows(x, fine, coarse).tofile(folder / "test.bin")
  source = data.load_source(_config("cifar100", tmp_path, verify=False), "test")
  assert source.num_classes == 100
  np.testing.assert_array_equal(source.images, x)
  np.testing.assert_array_equal(source.labels, fine)


def _write_pickle_batch(path, images, label_key, labels):
  batch = {
    b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
    label_key: [int(v) for v in labels],
  }
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=2)


def test_cifar_python_batches(tmp_path):
  rng = np.random.default_rng(3)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  xs, ys = [], []
  for i in range(1, 6):
    x, y = _random_images(rng, 2, (32, 32, 3)), rng.integers(0, 10, 2)
    _write_pickle_batch(folder / f"data_batch_{i}", x, b"labels", y)
    xs.append(x)
    ys.append(y)
  train = data.load_source(_config("cifar10", tmp_path, verify=False), "train")
  np.testing.assert_array_equal(train.images, np.concatenate(xs))
  np.testing.assert_array_equal(train.labels, np.concatenate(ys))
  with pytest.raises(data.DatasetError, match="data_batch_1 is corrupt or not the official"):
    data.load_source(_config("cifar10", tmp_path), "train")
  folder100 = tmp_path / "cifar-100-python"
  folder100.mkdir()
  x = _random_images(rng, 3, (32, 32, 3))
  _write_pickle_batch(folder100 / "test", x, b"fine_labels", [5, 77, 0])
  test = data.load_source(_config("cifar100", tmp_path, verify=False), "test")
  np.testing.assert_array_equal(test.images, x)
  np.testing.assert_array_equal(test.labels, [5, 77, 0])


def test_pickle_with_code_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump({b"data": Evil(), b"labels": [0]}, f)
  with pytest.raises(data.DatasetError, match="refusing to load builtins.print"):
    data.load_source(_config("cifar10", tmp_path, verify=False), "test")


def test_bad_names_and_missing_directories(tmp_path):
  with pytest.raises(ValueError, match="data.name='imagenet' is not allowed: one of synthetic"):
    data.load_source(_config("imagenet"), "train")
  with pytest.raises(ValueError, match="unknown split 'val'"):
    data.load_source(_config("digits"), "val")
  for name, where, message in (
    ("mnist", tmp_path / "nope", "does not exist"),
    ("fashion_mnist", tmp_path, "fashion_mnist train split not found"),
    ("cifar10", tmp_path, "cifar10 train split not found"),
  ):
    with pytest.raises(data.DatasetError, match=message) as err:
      data.load_source(_config(name, where), "train")
    assert "\n" not in str(err.value) and "http" in str(err.value)


def test_digits_split():
  train, test = (data.load_source(_config("digits"), s) for s in ("train", "test"))
  assert (len(train), len(test)) == (1437, 360)
  assert train.image_shape == (8, 8, 1) and train.images.dtype == np.uint8
  assert train.images.max() == 255 and train.images.min() == 0
  # Stratified: every class has 35 to 37 test examples; the union is sklearn's 1797.
  counts = np.bincount(test.labels, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37
  all_counts = np.bincount(np.concatenate([train.labels, test.labels]))
  np.testing.assert_array_equal(all_counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
  assert test.mean == train.mean  # Normalization from the training split.


def test_synthetic_source_is_deterministic():
  config = _config("synthetic")
  config.synthetic.num_train, config.synthetic.channels = 50, 2
  a, b = data.load_source(config, "train"), data.load_source(config, "train")
  test = data.load_source(config, "test")
  assert len(a) == 50 and len(test) == 256 and a.image_shape == (16, 16, 2)
  images, labels = a.get_batch(np.arange(50))
  np.testing.assert_array_equal(images, b.get_batch(np.arange(50))[0])
  np.testing.assert_array_equal(a[7]["image"], images[7])
  assert labels.min() >= 0 and labels.max() < 10 and len(np.unique(labels)) > 5
  assert not np.array_equal(test.get_batch(np.arange(50))[0], images)
  with pytest.raises(IndexError):
    a[50]  # noqa: B018


# A tiny dataset prepared in the TFDS array_record format without TensorFlow (uint8 Tensor
# features: TFDS's Image feature needs TensorFlow to encode PNGs).
TFDS_TRAIN, TFDS_TEST = 12, 5


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class NfresnetTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=3),
        }
      )
      return tfds.core.DatasetInfo(
        builder=self, features=features, supervised_keys=("image", "label")
      )

    def _split_generators(self, dl_manager):
      return {
        "train": self._generate_examples(TFDS_TRAIN),
        "test": self._generate_examples(TFDS_TEST),
      }

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": np.full((6, 6, 1), 10 * i, np.uint8), "label": i % 3}

  root = tmp_path_factory.mktemp("tfds")
  NfresnetTinyImages(data_dir=str(root), file_format="array_record").download_and_prepare()
  return root


def test_tfds_array_record_source(tfds_dir):
  config = _config("tfds", tfds_dir, tfds_name="nfresnet_tiny_images")
  train, test = data.load_source(config, "train"), data.load_source(config, "test")
  assert (len(train), len(test)) == (TFDS_TRAIN, TFDS_TEST)
  assert train.num_classes == 3 and train.image_shape == (6, 6, 1)
  values = sorted(int(train[i]["image"][0, 0, 0]) for i in range(TFDS_TRAIN))
  assert values == [10 * i for i in range(TFDS_TRAIN)]
  i = 4
  assert int(train[i]["label"]) == int(train[i]["image"][0, 0, 0]) // 10 % 3
  pixels = np.arange(TFDS_TRAIN) * 10 / 255
  assert train.mean[0] == pytest.approx(pixels.mean()) and train.std[0] == pytest.approx(
    pixels.std()
  )
  batch = next(data.train_batches(train, config, global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 16, 16, 1)


def test_tfds_not_prepared_is_one_line(tfds_dir):
  with pytest.raises(
    data.DatasetError, match="'mnist' is not prepared in .*tfds build mnist"
  ) as err:
    data.load_source(_config("tfds", tfds_dir, tfds_name="mnist"), "train")
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="needs data.tfds_name"):
    data.load_source(_config("tfds", tfds_dir), "train")


def test_shared_mnist_and_fashion_mnist(shared_data_dir):
  expected_first = {
    "mnist": ([5, 0, 4, 1, 9, 2, 1, 3, 1, 4], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    "fashion_mnist": ([9, 0, 0, 3, 0, 2, 7, 2, 5, 5], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]),
  }
  for name, (first_train, first_test) in expected_first.items():
    train = data.load_source(_config(name, shared_data_dir), "train")
    test = data.load_source(_config(name, shared_data_dir), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(train.labels[:10], first_train)
    np.testing.assert_array_equal(test.labels[:10], first_test)
    # The hard-coded normalization constants are the training split's statistics.
    pixels = train.images.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(train.mean[0], abs=5e-5)
    assert pixels.std() == pytest.approx(train.std[0], abs=5e-5)
    if name == "fashion_mnist":
      np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
      np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    else:
      np.testing.assert_array_equal(
        np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
      )


def test_shared_cifar10_subset(shared_data_dir):
  train = data.load_source(_config("cifar10", shared_data_dir), "train")
  test = data.load_source(_config("cifar10", shared_data_dir), "test")
  assert (len(train), len(test)) == (4000, 1000)
  np.testing.assert_array_equal(
    np.bincount(train.labels), [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
  )
  np.testing.assert_array_equal(
    np.bincount(test.labels), [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
  )
  np.testing.assert_array_equal(train.labels[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  np.testing.assert_array_equal(test.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
  # Pixel values printed for x_train[0] / x_test[0] in the data README (HWC order).
  np.testing.assert_array_equal(train.images[0, 0, :3], [[59, 62, 63], [43, 46, 45], [50, 48, 43]])
  np.testing.assert_array_equal(train.images[0, 1, :3], [[16, 20, 20], [0, 0, 0], [18, 8, 0]])
  np.testing.assert_array_equal(
    test.images[0, 0, -3:], [[137, 95, 36], [126, 91, 36], [116, 85, 33]]
  )


def test_validation_split_is_held_out_of_train_and_fixed():
  config = _config("digits", validation_examples=300)
  train = data.load_source(config, "train")
  validation = data.load_source(config, "validation")
  full = data.load_source(_config("digits"), "train")
  assert (len(train), len(validation), len(full)) == (1137, 300, 1437)
  held_out = data.sources.validation_indices(1437, 300)
  np.testing.assert_array_equal(held_out, data.sources.validation_indices(1437, 300))
  rest = np.setdiff1d(np.arange(1437), held_out)
  images, labels = validation.get_batch(np.arange(300))
  np.testing.assert_array_equal(images, full.images[held_out])
  np.testing.assert_array_equal(labels, full.labels[held_out])
  np.testing.assert_array_equal(train.get_batch(np.arange(5))[0], full.images[rest[:5]])
  assert len(set(held_out) & set(rest)) == 0
  assert train.mean == full.mean and validation.num_classes == 10
  # Test is untouched; without validation_examples there is no validation split.
  assert len(data.load_source(config, "test")) == 360
  with pytest.raises(ValueError, match="needs data.validation_examples > 0"):
    data.load_source(_config("digits"), "validation")
  with pytest.raises(ValueError, match=r"validation_examples=1437 must be in \[1, 1436\]"):
    data.load_source(_config("digits", validation_examples=1437), "train")
