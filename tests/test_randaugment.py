"""Tests of experiments/data/randaugment.py and its use in the data pipeline."""

import numpy as np
import pytest

from experiments import data
from experiments.data import augment, pipeline, sources
from experiments.data import randaugment as ra

SIGNS = np.array([1.0, -1.0])


def _images(shape=(2, 8, 8, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _marked(value=255, y=2, x=5, size=8):
  """A black ``[1, size, size, 1]`` image with one pixel ``value`` at row y, column x."""
  image = np.zeros((1, size, size, 1), np.uint8)
  image[0, y, x] = value
  return image


def _position(image):
  return tuple(int(i) for i in np.argwhere(image[0, ..., 0] == 255)[0])


def test_parse_level():
  assert ra.parse_level("405") == (4, 5)
  assert ra.parse_level("410") == (4, 10)
  assert ra.parse_level("415") == (4, 15)
  assert ra.parse_level("15") == (2, 15)  # Reference: 100 or less is a magnitude, 2 layers.
  assert ra.parse_level("1205") == (12, 5)
  for bad in ["", "4x5", "-405", " 405", "40500", "4.5", 405, None]:
    with pytest.raises(ValueError, match="RandAugment level must be digits") as info:
      ra.parse_level(bad)
    assert "\n" not in str(info.value)


def test_num_draws_and_op_table():
  assert ra.NUM_DRAWS(4) == 16 and ra.NUM_DRAWS(0) == 0
  assert len(ra.OPS) == 16 and len(set(ra.OPS)) == 16
  assert set(ra._op_table(5)) == set(ra.OPS)


@pytest.mark.parametrize("magnitude", [0, 5, 10, 15])
def test_every_op_keeps_dtype_and_shape(magnitude):
  x = _images()
  centres = np.array([[3, 3], [0, 7]])
  for name, op in ra._op_table(magnitude).items():
    y = op(x, SIGNS, centres)
    assert y.dtype == np.uint8 and y.shape == x.shape, name
  gray = _images((2, 8, 8, 1))
  for name, op in ra._op_table(magnitude).items():
    assert op(gray, SIGNS, centres).shape == gray.shape, name


def test_identity_at_magnitude_zero_where_the_op_is_the_identity():
  x = _images()
  ops = ra._op_table(0)
  centres = np.array([[3, 3], [0, 7]])
  for name in ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd"]:
    np.testing.assert_array_equal(ops[name](x, SIGNS, centres), x, err_msg=name)
  # The enhance ops are the identity at factor 1.0, magnitude 5 (0.5 * 1.8 + 0.1).
  for name in ["Color", "Contrast", "Brightness", "Sharpness"]:
    np.testing.assert_array_equal(ra._op_table(5)[name](x, SIGNS, centres), x, err_msg=name)
  # Reference quirks: Solarize's threshold 0 inverts, and at 256 (magnitude 10) wraps to 0.
  np.testing.assert_array_equal(ops["Solarize"](x, SIGNS, centres), 255 - x)
  np.testing.assert_array_equal(ra._op_table(10)["Solarize"](x, SIGNS, centres), 255 - x)


def test_invert_posterize_solarize_exact():
  x = np.array([0, 1, 100, 127, 128, 200, 255], np.uint8).reshape(1, 1, 7, 1)
  np.testing.assert_array_equal(ra.invert(x).ravel(), [255, 254, 155, 128, 127, 55, 0])
  np.testing.assert_array_equal(ra.posterize(x, 2).ravel(), [0, 0, 64, 64, 128, 192, 192])
  np.testing.assert_array_equal(ra.posterize(x, 4).ravel(), [0, 0, 96, 112, 128, 192, 240])
  np.testing.assert_array_equal(ra.posterize(x, 8), x)
  np.testing.assert_array_equal(ra.posterize(x, 0), ra.posterize(x, 1))  # Shift clamped to 7.
  np.testing.assert_array_equal(ra.solarize(x, 128).ravel(), [0, 1, 100, 127, 127, 55, 0])
  np.testing.assert_array_equal(ra.solarize(x, 384), ra.solarize(x, 128))  # Modulo 256.
  np.testing.assert_array_equal(ra.solarize_add(x, 55).ravel(), [55, 56, 155, 182, 128, 200, 255])
  np.testing.assert_array_equal(
    ra.solarize_add(x, 200).ravel(), [200, 201, 255, 255, 128, 200, 255]
  )
  # Level -> argument: magnitude 5 posterizes to int(0.5 * 4) = 2 bits, 10 to 4 bits.
  table5, table10 = ra._op_table(5), ra._op_table(10)
  np.testing.assert_array_equal(table5["Posterize"](x, SIGNS, None), ra.posterize(x, 2))
  np.testing.assert_array_equal(table10["Posterize"](x, SIGNS, None), ra.posterize(x, 4))
  np.testing.assert_array_equal(table5["SolarizeAdd"](x, SIGNS, None), ra.solarize_add(x, 55))


def test_autocontrast_stretches_each_channel():
  x = np.zeros((1, 2, 2, 2), np.uint8)
  x[0, :, :, 0] = [[0, 17], [34, 51]]  # Range 0..51: scale 5.
  x[0, :, :, 1] = 90  # Flat: unchanged.
  y = ra.autocontrast(x)
  np.testing.assert_array_equal(y[0, :, :, 0], [[0, 85], [170, 255]])
  np.testing.assert_array_equal(y[0, :, :, 1], 90)
  lifted = ra.autocontrast(np.array([10, 20, 61], np.uint8).reshape(1, 1, 3, 1))
  np.testing.assert_array_equal(lifted.ravel(), [0, 50, 255])


def test_equalize_flattens_a_dark_ramp():
  # 64 levels of 85 pixels: step = (5440 - 85) // 255 = 21, levels spread over 0..255.
  ramp = np.repeat(np.arange(64, dtype=np.uint8), 85).reshape(1, 68, 80, 1)
  y = ra.equalize(ramp)
  levels, counts = np.unique(y, return_counts=True)
  assert len(levels) == 64 and (counts == 85).all()
  assert levels[0] == 0 and levels[-1] == 255 and set(np.diff(levels)) <= {4, 5}
  small = _images((1, 8, 8, 3))  # 64 pixels: step 0, unchanged (as PIL and the reference).
  np.testing.assert_array_equal(ra.equalize(small), small)


def test_colour_ops_blend_with_their_degenerate_image():
  x = _images((2, 8, 8, 3))
  np.testing.assert_array_equal(ra.brightness(x, 0.0), 0)
  np.testing.assert_array_equal(
    ra.brightness(x, 0.5), (x.astype(np.float32) * 0.5).astype(np.uint8)
  )
  bright = ra.brightness(x, 1.9)
  np.testing.assert_array_equal(bright, np.clip(x * np.float32(1.9), 0, 255).astype(np.uint8))
  gray = ra.color(x, 0.0)
  assert (gray == gray[..., :1]).all()  # Fully desaturated.
  np.testing.assert_array_equal(gray[..., 0], ra.grayscale(x)[..., 0])
  white = np.full((1, 2, 2, 3), 255, np.uint8)
  np.testing.assert_array_equal(ra.grayscale(white), 255)
  # Contrast's constant is the reference's H * W / 256: 32 * 32 / 256 = 4.
  big = _images((1, 32, 32, 3))
  np.testing.assert_array_equal(ra.contrast(big, 0.0), 4)
  # Sharpness: a flat image is unchanged; the smoothed centre of a spike keeps 5/13 of it.
  flat = np.full((1, 5, 5, 1), 77, np.uint8)
  np.testing.assert_array_equal(ra.sharpness(flat, 0.1), flat)
  spike = _marked(130, 2, 2, 5)
  smooth = ra.sharpness(spike, 0.0)
  assert smooth[0, 2, 2, 0] == 50 and smooth[0, 1, 1, 0] == 10 and smooth[0, 0, 0, 0] == 0


def test_cutout_paints_a_square_of_fill():
  x = np.zeros((2, 8, 8, 1), np.uint8)
  y = ra.cutout(x, 2, np.array([4, 0]), np.array([4, 7]))
  expected = np.zeros((2, 8, 8), bool)
  expected[0, 2:6, 2:6] = True  # [c - pad, c + pad).
  expected[1, 0:2, 5:8] = True  # Clipped at the border.
  np.testing.assert_array_equal(y[..., 0] == ra.FILL, expected)
  assert set(np.unique(y)) == {0, ra.FILL}
  # Magnitude 10: half-side CUTOUT_CONST = 40 covers a whole small image.
  full = ra._op_table(10)["Cutout"](x, SIGNS, np.array([[4, 4], [0, 0]]))
  np.testing.assert_array_equal(full, ra.FILL)


def test_translate_shear_rotate_move_a_marked_pixel():
  image = _marked()  # Row 2, column 5.
  assert _position(ra.translate_x(image, np.array([2.0]))) == (2, 3)  # Content moves left.
  assert _position(ra.translate_x(image, np.array([-2.0]))) == (2, 7)
  assert _position(ra.translate_y(image, np.array([1.0]))) == (1, 5)  # Content moves up.
  moved = ra.translate_x(image, np.array([3.0]))
  np.testing.assert_array_equal(moved[0, :, 5:, 0], ra.FILL)  # Uncovered columns filled.
  # ShearX: output (x, y) samples (x + 0.5 y, y); row 2 shifts left by 1.
  assert _position(ra.shear_x(image, np.array([0.5]))) == (2, 4)
  # ShearY: output (x, y) samples (x, 0.2 x + y); the pixel at x = 5 moves up by 1.
  assert _position(ra.shear_y(image, np.array([0.2]))) == (1, 5)
  # Rotate by 90 about the centre (3.5, 3.5): output (x, y) samples input (7 - y, x), so
  # input (x 5, y 2) lands at (x 2, y 2); by -90 output samples (y, 7 - x): at (x 5, y 5).
  assert _position(ra.rotate(image, np.array([90.0]))) == (2, 2)
  assert _position(ra.rotate(image, np.array([-90.0]))) == (5, 5)
  back = ra.rotate(ra.rotate(image, np.array([90.0])), np.array([-90.0]))
  np.testing.assert_array_equal(back, image)
  corners = ra.rotate(np.zeros((1, 8, 8, 1), np.uint8), np.array([45.0]))
  assert corners[0, 0, 0, 0] == ra.FILL and corners[0, 4, 4, 0] == 0


def test_signed_ops_follow_the_sign_draw():
  image = np.concatenate([_marked(), _marked()])
  moved = ra._op_table(0.2)["TranslateX"](image, SIGNS, None)  # 0.02 * 100 = 2 pixels.
  assert _position(moved[:1]) == (2, 3) and _position(moved[1:]) == (2, 7)


def test_rand_augment_is_deterministic_and_uses_its_draws():
  x = _images((6, 8, 8, 3))
  keys = augment.example_keys(0, 0, np.arange(6))
  u = augment.uniforms(keys, ra.NUM_DRAWS(4))
  a, b = ra.rand_augment(x, u, 4, 5), ra.rand_augment(x, u.copy(), 4, 5)
  assert a.dtype == np.uint8 and a.shape == x.shape
  np.testing.assert_array_equal(a, b)
  other = ra.rand_augment(x, augment.uniforms(keys ^ np.uint64(1), 16), 4, 5)
  assert not np.array_equal(a, other)
  np.testing.assert_array_equal(ra.rand_augment(x, u, 0, 5), x)
  # Per example: a row's result does not depend on the rest of the batch.
  np.testing.assert_array_equal(ra.rand_augment(x[2:3], u[2:3], 4, 5), a[2:3])
  # One layer whose op draw selects Invert (index 2) always applies it.
  invert_draw = np.full((6, 4), (2 + 0.5) / 16)
  np.testing.assert_array_equal(ra.rand_augment(x, invert_draw, 1, 5), 255 - x)
  with pytest.raises(ValueError, match="draws"):
    ra.rand_augment(x, u[:, :3], 1, 5)
  with pytest.raises(ValueError, match="uint8"):
    ra.rand_augment(x.astype(np.float32), u, 4, 5)


def _source():
  images = _images((8, 12, 12, 3), seed=1)
  return data.ArraySource("rand", images, np.arange(8) % 2, 2, (0.5,) * 3, (0.25,) * 3)


def _config(**overrides):
  config = data.default_data_config()
  config.update(dict(augment="inception", image_size=8, worker_threads=0, **overrides))
  return config


def test_pipeline_without_randaugment_is_unchanged():
  source = _source()
  images = source.images
  keys = augment.example_keys(0, 3, np.arange(8))
  u = augment.uniforms(keys, augment.NUM_INCEPTION_DRAWS)
  boxes = augment.inception_boxes(u, np.full(8, 12.0), np.full(8, 12.0))
  crops = augment.flip_where(augment.crop_resize(images, boxes, 8), u[:, -1] < 0.5)
  before = augment.normalize(crops, source.mean, source.std)
  off = pipeline.process_images(images, _config(), source, keys)
  assert off.tobytes() == before.tobytes()
  on = pipeline.process_images(images, _config(randaugment="405"), source, keys)
  assert on.shape == off.shape and on.dtype == np.float32 and not np.array_equal(on, off)
  salted = augment.uniforms(keys ^ pipeline.RANDAUGMENT_SALT, 16)
  pixels = ra.rand_augment(np.clip(crops, 0, 255).astype(np.uint8), salted, 4, 5)
  np.testing.assert_array_equal(on, augment.normalize(pixels, source.mean, source.std))
  evals = [
    pipeline.process_images(images, _config(randaugment=r), source, None) for r in (None, "405")
  ]
  assert evals[0].tobytes() == evals[1].tobytes()


def test_train_and_eval_batches_with_randaugment():
  source = _source()
  kwargs = dict(global_batch_size=4, seed=0)
  off = next(data.train_batches(source, _config(), **kwargs))
  on = next(data.train_batches(source, _config(randaugment="405"), **kwargs))
  np.testing.assert_array_equal(on["label"], off["label"])
  assert not np.array_equal(on["image"], off["image"])
  eval_off = next(data.eval_batches(source, _config(), global_batch_size=4))
  eval_on = next(data.eval_batches(source, _config(randaugment="405"), global_batch_size=4))
  np.testing.assert_array_equal(eval_on["image"], eval_off["image"])


def test_check_config_rejects_a_bad_level():
  sources.check_config(_config(randaugment="415"))
  with pytest.raises(
    ValueError, match="data.randaugment=.* is not allowed: RandAugment level"
  ) as info:
    sources.check_config(_config(randaugment="4-5"))
  assert "\n" not in str(info.value)


def test_nfnet_config_levels_and_smoke():
  from experiments.configs import nfnet  # noqa: PLC0415 (imports the model library)

  levels = {
    v: nfnet.get_config(f"variant={v}").data.randaugment for v in ["F0", "F1", "F2", "F3", "F7+"]
  }
  assert levels == {"F0": "405", "F1": "410", "F2": "410", "F3": "415", "F7+": "415"}
  assert nfnet.get_config("smoke").data.randaugment is None
