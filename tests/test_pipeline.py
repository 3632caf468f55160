"""Tests of experiments/data/pipeline.py: determinism, resume, sharding, ragged evaluation."""

import itertools

import numpy as np
import pytest

from experiments import data
from experiments.data import pipeline


def _config(**overrides):
  config = data.default_data_config()
  config.update(overrides)
  return config


def _index_source(n, size=4, num_classes=5):
  """Example ``i`` has every pixel ``i`` (n <= 256), so batches reveal their indices."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 1))
  return data.ArraySource(
    "index", images.copy(), np.arange(n) % num_classes, num_classes, (0.0,), (1 / 255,)
  )


def _indices(batch):
  """Recovers example indices from un-augmented batches of ``_index_source`` (std 1/255)."""
  return np.round(batch["image"][:, 0, 0, 0]).astype(int)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


@pytest.fixture(scope="module")
def digits():
  return data.load_source(_config(), "train")


def test_batch_shapes_and_types(digits):
  config = _config(augment="cifar")
  batch = next(data.train_batches(digits, config, global_batch_size=16, seed=0))
  assert batch["image"].shape == (16, 16, 16, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  mixed = next(data.train_batches(digits, _config(mixup_alpha=0.2), global_batch_size=16, seed=0))
  assert mixed["image"].shape == (16, 16, 16, 1)  # 32 raw examples mixed into 16.
  assert mixed["label"].shape == (16, 10) and mixed["label"].dtype == np.float32
  np.testing.assert_allclose(mixed["label"].sum(1), 1.0, atol=1e-6)
  inception = _config(augment="inception", image_size=12)
  batch = next(data.train_batches(digits, inception, global_batch_size=8, seed=0))
  assert batch["image"].shape == (8, 12, 12, 1)
  evals = next(data.eval_batches(digits, inception, global_batch_size=8))
  assert evals["image"].shape == (8, 12, 12, 1)
  stored = _config(image_size=0, augment="cifar")  # 0: the stored size, 8 px for digits.
  train_stored = next(data.train_batches(digits, stored, global_batch_size=8, seed=0))
  assert train_stored["image"].shape == (8, 8, 8, 1)
  assert next(data.eval_batches(digits, stored, global_batch_size=8))["image"].shape[1] == 8


def test_epochs_are_permutations():
  n, g = 24, 8
  source = _index_source(n)
  batches = _take(data.train_batches(source, _config(image_size=4), global_batch_size=g, seed=3), 9)
  epochs = np.concatenate([_indices(b) for b in batches]).reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])  # Reshuffled every epoch.
  np.testing.assert_array_equal(batches[0]["label"], _indices(batches[0]) % 5)


def test_determinism_by_seed(digits):
  config = _config(augment="cifar", cutmix_alpha=1.0, mixup_alpha=0.2)
  a = _take(data.train_batches(digits, config, global_batch_size=32, seed=5), 4)
  b = _take(data.train_batches(digits, config, global_batch_size=32, seed=5), 4)
  c = _take(data.train_batches(digits, config, global_batch_size=32, seed=6), 4)
  for x, y, z in zip(a, b, c, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(x["image"], z["image"])


@pytest.mark.parametrize("threads", [0, 2])
def test_resume_equals_uninterrupted(digits, threads):
  config = _config(augment="cifar", mixup_alpha=0.3, worker_threads=threads)
  steps = 50  # 50 * 64 examples: more than two epochs of 1437.
  full = _take(data.train_batches(digits, config, global_batch_size=64, seed=1), steps)
  for k in (1, 22, 45):
    resumed = next(data.train_batches(digits, config, global_batch_size=64, seed=1, start_step=k))
    np.testing.assert_array_equal(resumed["image"], full[k]["image"])
    np.testing.assert_array_equal(resumed["label"], full[k]["label"])


def _shard_batches(source, config, global_batch_size, seed, steps, process_count):
  return [
    _take(
      data.train_batches(
        source,
        config,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=p,
        process_count=process_count,
      ),
      steps,
    )
    for p in range(process_count)
  ]


def test_process_shards_cover_global_batch(digits):
  config = _config(augment="cifar")
  whole = _take(data.train_batches(digits, config, global_batch_size=48, seed=2), 3)
  shards = _shard_batches(digits, config, 48, 2, 3, 4)
  for step in range(3):
    parts = [shards[p][step] for p in range(4)]
    assert all(part["image"].shape == (12, 16, 16, 1) for part in parts)
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole[step]["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole[step]["label"])
  # Shards of the index source are disjoint and together one epoch (5 steps of 8 = 40).
  shards = _shard_batches(_index_source(40), _config(image_size=4), 8, 0, 5, 2)
  seen = [np.concatenate([_indices(b) for b in batches]) for batches in shards]
  assert not set(seen[0]) & set(seen[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(40))


def test_eval_ragged_last_batch_two_processes():
  n, g = 37, 8
  source = _index_source(n)
  config = _config(image_size=4, augment="cifar")  # No augmentation at evaluation.
  per_process = [
    list(data.eval_batches(source, config, global_batch_size=g, process_index=p, process_count=2))
    for p in range(2)
  ]
  assert [len(b) for b in per_process] == [5, 5]  # ceil(37 / 8) batches on every process.
  seen, masks = [], []
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (4, 4, 4, 1) and batch["mask"].dtype == np.float32
      real = batch["mask"] == 1
      seen.extend(_indices(batch)[real])
      np.testing.assert_array_equal(batch["label"][real], _indices(batch)[real] % 5)
      assert np.all(batch["image"][~real] == 0) and np.all(batch["label"][~real] == 0)
      masks.append(batch["mask"])
  assert float(np.sum(np.concatenate(masks))) == n
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  # Last global batch: 5 real examples, all on process 0.
  np.testing.assert_array_equal(per_process[0][-1]["mask"], [1, 1, 1, 1])
  np.testing.assert_array_equal(per_process[1][-1]["mask"], [1, 0, 0, 0])


def test_eval_normalization_matches_training_statistics(digits):
  config = _config(image_size=8)  # Stored size: no resize, so exactly the statistics.
  images = np.concatenate(
    [b["image"] for b in data.eval_batches(digits, config, global_batch_size=500)]
  )
  masks = np.concatenate(
    [b["mask"] for b in data.eval_batches(digits, config, global_batch_size=500)]
  )
  real = images[masks == 1]
  assert len(real) == 1437
  assert float(real.mean()) == pytest.approx(0.0, abs=1e-5)
  assert float(real.std()) == pytest.approx(1.0, abs=1e-5)


def test_bad_arguments(digits):
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    data.train_batches(digits, _config(), global_batch_size=16, seed=0, process_count=3)
  with pytest.raises(ValueError, match="bad process_index=2"):
    data.eval_batches(digits, _config(), global_batch_size=16, process_index=2, process_count=2)
  with pytest.raises(
    ValueError, match="data.augment='autoaugment' is not allowed: one of none, cifar, inception"
  ):
    data.train_batches(digits, _config(augment="autoaugment"), global_batch_size=16, seed=0)


def test_shuffled_batch_indices_spanning_epochs():
  indices = pipeline.ShuffledBatchIndices(5, 12, seed=9)  # Batches larger than the data.
  stream = np.concatenate([indices[k] for k in range(5)]).reshape(12, 5)
  for epoch in stream:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(5))
  np.testing.assert_array_equal(indices[3], pipeline.ShuffledBatchIndices(5, 12, seed=9)[3])
