"""Tests of experiments/data/augment.py: keys, resize, crops, flips, MixUp/CutMix."""

import math

import jax
import numpy as np
import pytest

from experiments.data import augment


def test_keys_are_deterministic_and_distinct():
  k1 = augment.example_keys(3, 7, np.arange(64))
  np.testing.assert_array_equal(k1, augment.example_keys(3, 7, np.arange(64)))
  assert len(np.unique(k1)) == 64
  others = [augment.example_keys(4, 7, np.arange(64)), augment.example_keys(3, 8, np.arange(64))]
  for k2 in others:
    assert not np.any(k1 == k2)
  u = augment.uniforms(augment.example_keys(0, 0, np.arange(20000)), 3)
  assert u.shape == (20000, 3) and u.min() >= 0 and u.max() < 1
  np.testing.assert_allclose(u.mean(0), 0.5, atol=0.01)
  np.testing.assert_allclose(np.corrcoef(u.T)[0, 1:], 0, atol=0.03)


@pytest.mark.parametrize(
  "shape, size", [((8, 8), 16), ((28, 28), 32), ((32, 32), 20), ((37, 23), 16)]
)
@pytest.mark.parametrize(
  "method, jax_method, antialias",
  [
    ("bilinear", "linear", True),
    ("bicubic", "cubic", False),  # The reference's ImageNet interpolation.
  ],
)
def test_resize_matches_jax_image_resize(shape, size, method, jax_method, antialias):
  x = np.random.default_rng(0).uniform(0, 255, (3, *shape, 2)).astype(np.float32)
  ours = augment.resize_batch(x, size, method)
  ref = jax.image.resize(x, (3, size, size, 2), jax_method, antialias=antialias)
  np.testing.assert_allclose(ours, np.asarray(ref), atol=2e-3)
  full = np.tile(np.array([[0, 0, shape[0], shape[1]]]), (3, 1))
  np.testing.assert_allclose(augment.crop_resize(x, full, size, method), ours, atol=2e-3)


def test_resize_identity_and_constant():
  x = np.random.default_rng(1).integers(0, 256, (2, 9, 9, 1)).astype(np.uint8)
  np.testing.assert_array_equal(augment.resize_batch(x, 9), x.astype(np.float32))
  const = np.full((1, 7, 5, 3), 42, np.uint8)
  np.testing.assert_allclose(augment.resize_batch(const, 12), 42.0, atol=1e-4)
  w = augment.resize_weights(10, 4, np.array([0.0, 3.0]), np.array([10.0, 2.0]))
  assert w.shape == (2, 4, 10)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  # An integer window at its own size is an exact crop.
  boxes = np.array([[2, 1, 4, 4]])
  np.testing.assert_array_equal(augment.crop_resize(x[:1], boxes, 4), x[:1, 2:6, 1:5])


def _expected_window(x, padding, dy, dx, flip):
  padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
  window = padded[dy : dy + x.shape[0], dx : dx + x.shape[1]]
  return window[:, ::-1] if flip else window


def test_pad_crop_flip_windows():
  rng = np.random.default_rng(2)
  x = rng.integers(1, 256, (32, 10, 12, 3)).astype(np.uint8)
  u = augment.uniforms(augment.example_keys(0, 1, np.arange(32)), 3)
  out = augment.pad_crop_flip(x, u, padding=4)
  assert out.shape == x.shape and out.dtype == x.dtype
  dys, dxs = (u[:, 0] * 9).astype(int), (u[:, 1] * 9).astype(int)
  assert dys.min() >= 0 and dys.max() <= 8 and len(np.unique(dys)) > 4
  for i in range(32):
    expected = _expected_window(x[i], 4, dys[i], dxs[i], u[i, 2] < 0.5)
    np.testing.assert_array_equal(out[i], expected)
  # Centre offset without flip is the identity; with flip, a mirror image.
  centre = np.array([[4.5 / 9, 4.5 / 9, 0.9], [4.5 / 9, 4.5 / 9, 0.1]])
  both = augment.pad_crop_flip(x[:2], centre, padding=4)
  np.testing.assert_array_equal(both[0], x[0])
  np.testing.assert_array_equal(both[1], x[1, :, ::-1])
  # Top-left corner offset: 4 rows and 4 columns of zero padding.
  corner = augment.pad_crop_flip(x[:1], np.array([[0.0, 0.0, 0.9]]), padding=4)
  assert np.all(corner[0, :4] == 0) and np.all(corner[0, :, :4] == 0)
  np.testing.assert_array_equal(corner[0, 4:, 4:], x[0, :-4, :-4])


def test_flip_where():
  x = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
  out = augment.flip_where(x, np.array([True, False]))
  np.testing.assert_array_equal(out[0], x[0, :, ::-1])
  np.testing.assert_array_equal(out[1], x[1])


def test_inception_boxes_bounds():
  n = 4000
  u = augment.uniforms(augment.example_keys(5, 0, np.arange(n)), augment.NUM_INCEPTION_DRAWS)
  heights = np.full(n, 200.0)
  widths = np.where(np.arange(n) % 2, 300.0, 160.0)
  boxes = augment.inception_boxes(u, heights, widths)
  y0, x0, h, w = boxes.T
  assert np.all(y0 >= 0) and np.all(x0 >= 0) and np.all(h >= 1) and np.all(w >= 1)
  assert np.all(y0 + h <= heights) and np.all(x0 + w <= widths)
  assert np.all(y0 == np.floor(y0)) and np.all(h == np.round(h))
  area = h * w / (heights * widths)
  assert area.min() > 0.07 and area.max() <= 1.0
  aspect = w / h
  assert aspect.min() > 0.74 and aspect.max() < 1.35
  assert area.min() < 0.1 and area.max() > 0.9  # The whole range is used.
  # No attempt fits (area > 100%): the fallback is the centred image, aspect-clipped.
  fallback = augment.inception_boxes(
    u[:2], np.array([100.0, 100.0]), np.array([100.0, 300.0]), (2.0, 3.0)
  )
  np.testing.assert_array_equal(fallback, [[0, 0, 100, 100], [0, 83, 100, 133]])


def test_centre_boxes():
  boxes = augment.centre_boxes(np.array([32.0, 40.0]), np.array([32.0, 64.0]), 0.875)
  np.testing.assert_allclose(boxes, [[2, 2, 28, 28], [2.5, 14.5, 35, 35]])


def test_normalize():
  x = np.array([[[[0, 255, 51]]]], np.uint8)
  out = augment.normalize(x, (0.5, 0.5, 0.2), (0.25, 0.5, 0.1))
  np.testing.assert_allclose(out[0, 0, 0], [-2.0, 1.0, 0.0], atol=1e-6)
  assert out.dtype == np.float32


def constant_images(n: int, size: int = 10) -> np.ndarray:
  """Image ``i`` is the constant ``i``, so every mixed pixel tells its sources apart."""
  return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, size, size, 1))


def test_mixup_cutmix_split_ratios_and_label_weights_on_a_fixed_key():
  """16 raw examples -> 8: 0-3 MixUp of (i, i + 4), 4-7 CutMix of (8 + i, 12 + i)."""
  images, labels = constant_images(16), np.arange(16)
  mixed, soft = augment.mix_batch(images, labels, 16, np.random.default_rng(7), 0.2, 1.0)
  assert mixed.shape == (8, 10, 10, 1) and soft.shape == (8, 16) and soft.dtype == np.float32
  np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
  draws = np.random.default_rng(7)
  lams = draws.beta(0.2, 0.2, size=4)  # The same generator state: the MixUp ratios come first.
  for i in range(4):  # MixUp: pixels lam * a + (1 - lam) * b with a = i, b = i + 4.
    a, b = i, i + 4
    assert set(np.flatnonzero(soft[i])) <= {a, b}
    np.testing.assert_allclose(soft[i, a], lams[i], rtol=1e-6)
    np.testing.assert_allclose(mixed[i], lams[i] * a + (1 - lams[i]) * b, rtol=1e-5)
  assert len(set(np.round(lams, 6))) == 4  # One ratio per example, not per batch.
  for i in range(4, 8):  # CutMix: a = 8 + (i - 4) inside the box, b = 12 + (i - 4) outside.
    a, b = 8 + i - 4, 12 + i - 4
    assert set(np.unique(mixed[i])) <= {a, b}
    np.testing.assert_allclose(soft[i, a], np.mean(mixed[i] == a), atol=1e-6)
    np.testing.assert_allclose(soft[i, b], np.mean(mixed[i] == b), atol=1e-6)
  inside = [np.mean(mixed[i] == 8 + i - 4) for i in range(4, 8)]
  assert any(0 < f < 1 for f in inside)  # Real boxes, not all-or-nothing.


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_one_kind_mixes_the_first_half_with_the_second(kind):
  images, labels = constant_images(6), np.arange(6)
  alphas = {"mixup_alpha": 0.4} if kind == "mixup" else {"cutmix_alpha": 1.0}
  mixed, soft = augment.mix_batch(images, labels, 6, np.random.default_rng(0), **alphas)
  assert mixed.shape == (3, 10, 10, 1)
  for i in range(3):
    assert set(np.flatnonzero(soft[i])) <= {i, i + 3}
    if kind == "mixup":
      np.testing.assert_allclose(mixed[i], soft[i, i] * i + soft[i, i + 3] * (i + 3), rtol=1e-5)
    else:
      np.testing.assert_allclose(soft[i, i], np.mean(mixed[i] == i), atol=1e-6)


def test_mixing_rejects_a_raw_batch_it_cannot_split():
  with pytest.raises(
    ValueError, match="mixup and cutmix needs a raw batch that is a multiple of 4"
  ):
    augment.mix_batch(constant_images(6), np.arange(6), 6, np.random.default_rng(0), 0.2, 1.0)


def test_mix_disabled_gives_one_hot():
  images = np.zeros((3, 2, 2, 1), np.float32)
  out, soft = augment.mix_batch(images, np.array([0, 2, 1]), 3, np.random.default_rng(0))
  np.testing.assert_array_equal(soft, np.eye(3)[[0, 2, 1]])
  assert out is images
  assert math.isclose(float(soft.sum()), 3.0)
