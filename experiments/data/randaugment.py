"""RandAugment (Cubuk et al. 2020, arXiv 1909.13719) as the NFNet reference applies it.

The NFNet recipe (arXiv 2102.06171; deepmind-research ``nfnets/autoaugment.py`` and
``dataset.py``) names a level ``"NMM"``: N layers of magnitude MM on a ``MAX_LEVEL`` of 10
(F0 ``"405"``, F1-F2 ``"410"``, F3-F7 ``"415"``; a number up to 100 is a magnitude with the
reference's default of 2 layers). Each layer picks one of the 16 ``OPS`` uniformly and always
applies it, with the same magnitude for every op; signed ops (Rotate, ShearX/Y, TranslateX/Y)
flip their sign with probability 1/2. Images are uint8 in [0, 255], before normalization.

Level ``m = magnitude / 10`` maps to the op's argument as the reference: Rotate ``30 m``
degrees, Posterize ``int(4 m)`` bits, Solarize threshold ``int(256 m)``, SolarizeAdd
``int(110 m)`` added below 128, Color/Contrast/Brightness/Sharpness enhance factor
``1.8 m + 0.1`` (1.0, the identity, at magnitude 5), ShearX/Y ``0.3 m``, TranslateX/Y
``TRANSLATE_CONST * m`` pixels, Cutout half-side ``int(CUTOUT_CONST * m)``; geometric ops
and Cutout fill with ``FILL``. Posterize and Solarize keep the reference's uint8 behaviour:
the shift ``8 - bits`` is clamped to 7 (TensorFlow's shift ops clamp), and the threshold
wraps modulo 256, so 256 (magnitude 10) inverts every pixel and 384 (15) solarizes at 128.

Randomness: example ``b`` reads ``DRAWS_PER_LAYER`` uniforms per layer from its row of
``u`` (op, sign, Cutout row and column); with ``u`` from ``augment.uniforms`` of the
per-example keys the result is a pure function of (seed, step, position).

Differences from the reference: ours runs per example before normalization and before
MixUp/CutMix; the NFNet reference (``augment_before_mix=False``) applies it to the mixed
images. Images with 1 channel use themselves as their grayscale.
"""

from __future__ import annotations

import math
import re

import numpy as np

MAX_LEVEL = 10.0  # The magnitude that maps to each op's "maximum" argument.
CUTOUT_CONST = 40  # Cutout half-side in pixels at magnitude 10.
TRANSLATE_CONST = 100  # Translation in pixels at magnitude 10.
FILL = 128  # Value of pixels uncovered by geometric ops and of the Cutout square.
DEFAULT_LAYERS = 2  # Layers of a level written as a bare magnitude (<= 100).
OPS = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "Posterize",
  "Solarize",
  "Color",
  "Contrast",
  "Brightness",
  "Sharpness",
  "ShearX",
  "ShearY",
  "TranslateX",
  "TranslateY",
  "Cutout",
  "SolarizeAdd",
)
"""The 16 ops, in the reference's order (the op draw indexes this tuple)."""
DRAWS_PER_LAYER = 4  # Op, sign, Cutout centre row, Cutout centre column.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights.
_LEVEL = re.compile(r"[0-9]{1,4}")


def NUM_DRAWS(layers: int) -> int:
  """Uniform draws per example that ``rand_augment`` reads for ``layers`` layers."""
  return DRAWS_PER_LAYER * int(layers)


def parse_level(level: str) -> tuple[int, int]:
  """``"NMM"`` -> ``(N, MM)``, e.g. ``"405"`` -> ``(4, 5)``; ``"15"`` -> ``(2, 15)``.

  As the reference: a value above 100 is ``layers * 100 + magnitude``, any other value a
  magnitude with ``DEFAULT_LAYERS`` layers.

  Raises:
    ValueError: (one line) not a string of 1 to 4 digits.
  """
  if not isinstance(level, str) or not _LEVEL.fullmatch(level):
    raise ValueError(
      f"RandAugment level must be digits 'NMM' (N layers, magnitude MM), e.g. '405'; got {level!r}"
    )
  value = int(level)
  return (value // 100, value % 100) if value > 100 else (DEFAULT_LAYERS, value)


# Colour ops ------------------------------------------------------------------------------


def _blend(degenerate: np.ndarray, images: np.ndarray, factor: float) -> np.ndarray:
  """``degenerate + factor * (images - degenerate)`` in float32, clipped and truncated to
  uint8 (PIL ImageEnhance: 0 gives ``degenerate``, 1 the image, above 1 extrapolates)."""
  if factor == 0.0:
    return np.broadcast_to(degenerate, images.shape).copy()
  if factor == 1.0:
    return images.copy()
  d = degenerate.astype(np.float32)
  out = d + np.float32(factor) * (images.astype(np.float32) - d)
  return np.clip(out, 0.0, 255.0).astype(np.uint8)


def grayscale(images: np.ndarray) -> np.ndarray:
  """uint8 ``[B, H, W, 1]`` luma (``GRAY_WEIGHTS``, quantized as TensorFlow: ``x * 255.5``
  truncated); a 1-channel image is its own grayscale."""
  if images.shape[-1] == 1:
    return images
  x = images[..., :3].astype(np.float32) * np.float32(1.0 / 255.0)
  gray = (x @ np.asarray(GRAY_WEIGHTS, np.float32)) * np.float32(255.5)
  return np.clip(gray, 0.0, 255.0).astype(np.uint8)[..., None]


def autocontrast(images: np.ndarray) -> np.ndarray:
  """Per image and channel, maps [min, max] linearly onto [0, 255] (a flat channel stays)."""
  lo = images.min(axis=(1, 2), keepdims=True).astype(np.float32)
  hi = images.max(axis=(1, 2), keepdims=True).astype(np.float32)
  scale = np.float32(255.0) / np.where(hi > lo, hi - lo, np.float32(1.0))
  out = np.clip(images.astype(np.float32) * scale + (-lo * scale), 0.0, 255.0).astype(np.uint8)
  return np.where(hi > lo, out, images)


def equalize(images: np.ndarray) -> np.ndarray:
  """PIL ``ImageOps.equalize`` per image and channel: a lookup table from the cumulative
  histogram, with ``step = (count - count of the top value) // 255``; step 0: unchanged."""
  b, h, w, c = images.shape
  rows = images.transpose(0, 3, 1, 2).reshape(b * c, h * w).astype(np.int64)
  offsets = 256 * np.arange(b * c)[:, None]
  hist = np.bincount((rows + offsets).ravel(), minlength=256 * b * c).reshape(b * c, 256)
  top = np.take_along_axis(hist, rows.max(axis=1, keepdims=True), axis=1)[:, 0]
  step = (h * w - top) // 255
  safe = np.maximum(step, 1)[:, None]
  lut = (np.cumsum(hist, axis=1) + (safe // 2)) // safe
  lut = np.clip(np.concatenate([np.zeros((b * c, 1), np.int64), lut[:, :-1]], axis=1), 0, 255)
  out = np.where(step[:, None] > 0, np.take_along_axis(lut, rows, axis=1), rows)
  return out.reshape(b, c, h, w).transpose(0, 2, 3, 1).astype(np.uint8)


def invert(images: np.ndarray) -> np.ndarray:
  """``255 - x``."""
  return 255 - images


def posterize(images: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the top ``bits`` bits (the shift ``8 - bits`` clamped to [0, 7], as TF's uint8
  shifts, so 0 bits keeps 1)."""
  shift = min((8 - int(bits)) % 256, 7)
  return (images >> shift) << shift


def solarize(images: np.ndarray, threshold: int) -> np.ndarray:
  """Inverts pixels ``>= threshold``; the threshold is taken modulo 256 as the reference's
  uint8 comparison does (256: every pixel inverted)."""
  t = int(threshold) % 256
  return np.where(images < t, images, 255 - images)


def solarize_add(images: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
  """Adds ``addition`` (clipped to [0, 255]) to the pixels below ``threshold``."""
  added = np.clip(images.astype(np.int64) + int(addition), 0, 255).astype(np.uint8)
  return np.where(images < threshold, added, images)


def color(images: np.ndarray, factor: float) -> np.ndarray:
  """PIL ``ImageEnhance.Color``: blends the grayscale image towards the image by ``factor``."""
  return _blend(grayscale(images), images, factor)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
  """``ImageEnhance.Contrast`` as the reference: blends a constant gray towards the image.

  The reference's constant is the sum of the 256-bin histogram over 256, i.e. ``H * W / 256``
  (clipped to 255), not PIL's mean luma; kept for fidelity.
  """
  _, h, w, _ = images.shape
  mean = np.uint8(min(h * w / 256.0, 255.0))
  return _blend(np.full((1, 1, 1, 1), mean, np.uint8), images, factor)


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
  """PIL ``ImageEnhance.Brightness``: blends black towards the image by ``factor``."""
  return _blend(np.zeros((1, 1, 1, 1), np.uint8), images, factor)


def sharpness(images: np.ndarray, factor: float) -> np.ndarray:
  """PIL ``ImageEnhance.Sharpness``: blends the 3x3 smoothed image (kernel 1s with 5 at the
  centre, / 13; the 1-pixel border unsmoothed) towards the image by ``factor``."""
  _, h, w, _ = images.shape
  x = images.astype(np.float32)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)
  smooth = sum(
    kernel[i, j] * x[:, i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3)
  )
  degenerate = images.copy()
  degenerate[:, 1:-1, 1:-1] = np.clip(smooth, 0.0, 255.0).astype(np.uint8)
  return _blend(degenerate, images, factor)


def cutout(images: np.ndarray, pad: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Paints ``FILL`` on rows ``[r - pad, r + pad)`` x cols ``[c - pad, c + pad)`` (clipped)
  around each example's centre ``(rows[b], cols[b])``; pad 0 paints nothing."""
  _, h, w, _ = images.shape
  rows, cols = np.asarray(rows)[:, None], np.asarray(cols)[:, None]
  in_y = (np.arange(h) >= rows - pad) & (np.arange(h) < rows + pad)
  in_x = (np.arange(w) >= cols - pad) & (np.arange(w) < cols + pad)
  mask = in_y[:, :, None, None] & in_x[:, None, :, None]
  return np.where(mask, np.uint8(FILL), images)


# Geometric ops ---------------------------------------------------------------------------


def affine(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
  """Inverse-mapped nearest-neighbour warp, as TensorFlow's projective transform.

  Output pixel (x, y) of example ``b`` shows input pixel ``(round(a0 x + a1 y + a2),
  round(b0 x + b1 y + b2))`` for ``transforms[b] = (a0, a1, a2, b0, b1, b2)`` (float32,
  rounding half away from zero), or ``FILL`` when that falls outside the image.
  """
  b, h, w, _ = images.shape
  t = np.asarray(transforms, np.float32).reshape(b, 6, 1, 1)
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

  def nearest(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)

  in_x = nearest(t[:, 0] * xs + t[:, 1] * ys + t[:, 2])
  in_y = nearest(t[:, 3] * xs + t[:, 4] * ys + t[:, 5])
  inside = (in_x >= 0) & (in_x < w) & (in_y >= 0) & (in_y < h)
  picked = images[np.arange(b)[:, None, None], np.clip(in_y, 0, h - 1), np.clip(in_x, 0, w - 1)]
  return np.where(inside[..., None], picked, np.uint8(FILL))


def _transforms(*columns) -> np.ndarray:
  return np.stack(np.broadcast_arrays(*[np.asarray(c, np.float32) for c in columns]), axis=1)


def rotate(images: np.ndarray, degrees: np.ndarray) -> np.ndarray:
  """Rotates each example by ``degrees[b]`` about its centre (tfa ``image.rotate``: output
  (x, y) samples the input at the centre plus R(angle) times the offset from the centre)."""
  _, h, w, _ = images.shape
  rad = np.asarray(degrees, np.float32) * np.float32(math.pi / 180.0)
  cos, sin = np.cos(rad), np.sin(rad)
  h1, w1 = np.float32(h - 1), np.float32(w - 1)
  x_off = (w1 - (cos * w1 - sin * h1)) / np.float32(2.0)
  y_off = (h1 - (sin * w1 + cos * h1)) / np.float32(2.0)
  return affine(images, _transforms(cos, -sin, x_off, sin, cos, y_off))


def shear_x(images: np.ndarray, level: np.ndarray) -> np.ndarray:
  """Output (x, y) samples input (x + level * y, y)."""
  return affine(images, _transforms(1, level, 0, 0, 1, 0))


def shear_y(images: np.ndarray, level: np.ndarray) -> np.ndarray:
  """Output (x, y) samples input (x, level * x + y)."""
  return affine(images, _transforms(1, 0, 0, level, 1, 0))


def translate_x(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
  """Output (x, y) samples input (x + pixels, y): the content moves ``pixels`` to the left."""
  return affine(images, _transforms(1, 0, pixels, 0, 1, 0))


def translate_y(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
  """Output (x, y) samples input (x, y + pixels): the content moves ``pixels`` up."""
  return affine(images, _transforms(1, 0, 0, 0, 1, pixels))


# RandAugment -----------------------------------------------------------------------------


def _op_table(magnitude: float) -> dict:
  """``name -> f(images, sign[n], centres[n, 2])`` with the reference's level -> argument."""
  m = float(magnitude) / MAX_LEVEL
  enhance = m * 1.8 + 0.1
  return {
    "AutoContrast": lambda x, s, c: autocontrast(x),
    "Equalize": lambda x, s, c: equalize(x),
    "Invert": lambda x, s, c: invert(x),
    "Rotate": lambda x, s, c: rotate(x, s * (m * 30.0)),
    "Posterize": lambda x, s, c: posterize(x, int(m * 4)),
    "Solarize": lambda x, s, c: solarize(x, int(m * 256)),
    "Color": lambda x, s, c: color(x, enhance),
    "Contrast": lambda x, s, c: contrast(x, enhance),
    "Brightness": lambda x, s, c: brightness(x, enhance),
    "Sharpness": lambda x, s, c: sharpness(x, enhance),
    "ShearX": lambda x, s, c: shear_x(x, s * (m * 0.3)),
    "ShearY": lambda x, s, c: shear_y(x, s * (m * 0.3)),
    "TranslateX": lambda x, s, c: translate_x(x, s * (m * TRANSLATE_CONST)),
    "TranslateY": lambda x, s, c: translate_y(x, s * (m * TRANSLATE_CONST)),
    "Cutout": lambda x, s, c: cutout(x, int(m * CUTOUT_CONST), c[:, 0], c[:, 1]),
    "SolarizeAdd": lambda x, s, c: solarize_add(x, int(m * 110)),
  }


def rand_augment(images: np.ndarray, u: np.ndarray, layers: int, magnitude: float) -> np.ndarray:
  """Applies ``layers`` RandAugment layers of ``magnitude`` to each example.

  Layer ``l`` of example ``b`` reads ``u[b, 4 l : 4 l + 4]``: the op ``OPS[floor(16 u0)]``,
  a negative sign when ``u1 < 0.5``, and the Cutout centre ``(floor(H u2), floor(W u3))``.

  Args:
    images: uint8 ``[B, H, W, C]`` with C 1 or 3.
    u: ``[B, >= NUM_DRAWS(layers)]`` uniform draws in [0, 1).
    layers: ops applied in sequence to each example.
    magnitude: shared magnitude of every op (on ``MAX_LEVEL`` = 10).

  Returns:
    uint8 ``[B, H, W, C]``.
  """
  x = np.array(images, copy=True)
  if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"RandAugment needs uint8 [B, H, W, 1 or 3], got {x.dtype} {x.shape}")
  u = np.asarray(u, np.float64)
  if u.ndim != 2 or len(u) != len(x) or u.shape[1] < NUM_DRAWS(layers):
    raise ValueError(f"RandAugment needs draws [{len(x)}, >= {NUM_DRAWS(layers)}], got {u.shape}")
  ops = _op_table(magnitude)
  _, h, w, _ = x.shape
  for layer in range(layers):
    d = u[:, DRAWS_PER_LAYER * layer : DRAWS_PER_LAYER * (layer + 1)]
    chosen = np.minimum((d[:, 0] * len(OPS)).astype(np.int64), len(OPS) - 1)
    sign = np.where(d[:, 1] < 0.5, -1.0, 1.0)
    centres = np.minimum((d[:, 2:4] * (h, w)).astype(np.int64), (h - 1, w - 1))
    for index, name in enumerate(OPS):
      sel = np.flatnonzero(chosen == index)
      if len(sel):
        x[sel] = ops[name](x[sel], sign[sel], centres[sel])
  return x
