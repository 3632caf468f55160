"""Image augmentations in numpy, vectorized over a batch and keyed per example.

Randomness is counter-based: every example gets a 64-bit key folded from
``(seed, step, position in the global batch)`` with the SplitMix64 finalizer, and its
``j``-th uniform draw is ``mix(key + (j + 1) * GOLDEN)``. The augmentation of an example is
therefore a pure function of those three numbers, whatever the process count or the batch
it lands in, and a whole batch is drawn with a few vectorized integer operations.

Resizing (also cropping, which is a resize of a sub-window) multiplies by two separable
interpolation matrices at half-pixel centres, built with one of ``RESIZE_METHODS``:
``"bilinear"`` (a triangle kernel widened by the scale factor when shrinking, i.e.
anti-aliased: ``jax.image.resize(..., "linear", antialias=True)``) or ``"bicubic"`` (Keys'
cubic kernel with a = -0.5 and no anti-aliasing: ``jax.image.resize(..., "cubic",
antialias=False)``, the interpolation of the reference implementation's ImageNet crops).
"""

from __future__ import annotations

import math

import numpy as np

# SplitMix64 constants (Steele, Lea & Flood, "Fast splittable pseudorandom number
# generators", OOPSLA 2014).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# Inception-style crop (Szegedy et al. 2015, "Going deeper with convolutions"): area
# fraction and aspect-ratio ranges, and the number of attempts before the fallback.
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_RATIOS = (3.0 / 4.0, 4.0 / 3.0)
INCEPTION_ATTEMPTS = 10
NUM_INCEPTION_DRAWS = 4 * INCEPTION_ATTEMPTS + 1  # 4 per attempt, then 1 for the flip.


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
  x = np.asarray(x, dtype=np.uint64)
  x = (x ^ (x >> np.uint64(30))) * _MIX1
  x = (x ^ (x >> np.uint64(27))) * _MIX2
  return x ^ (x >> np.uint64(31))


def example_keys(seed: int, step: int, positions: np.ndarray) -> np.ndarray:
  """Per-example 64-bit keys folded from ``(seed, step, position)``.

  Args:
    seed: the experiment's data seed.
    step: the training step (global batch number).
    positions: int array of positions in the global batch.

  Returns:
    uint64 array shaped like ``positions``.
  """
  base = _mix64(np.array([seed % 2**64], dtype=np.uint64) + GOLDEN)
  base = _mix64(base ^ np.uint64(step % 2**64))
  pos = np.asarray(positions, dtype=np.uint64)
  return _mix64(base ^ (pos * GOLDEN + np.uint64(1)))


def uniforms(keys: np.ndarray, num: int) -> np.ndarray:
  """``num`` uniform draws in [0, 1) per key: float64 array ``[*keys.shape, num]``."""
  counters = (np.arange(1, num + 1, dtype=np.uint64) * GOLDEN)[None, :]
  bits = _mix64(np.asarray(keys, dtype=np.uint64).reshape(-1, 1) + counters)
  out = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
  return out.reshape(*np.shape(keys), num)


RESIZE_METHODS = ("bilinear", "bicubic")
KEYS_CUBIC_A = -0.5  # Keys (1981); the value of TensorFlow's and JAX's bicubic resize.


def _kernel(distance: np.ndarray, method: str) -> np.ndarray:
  """Interpolation kernel at ``distance`` (in kernel units) from an output pixel centre."""
  x = np.abs(distance)
  if method == "bilinear":
    return np.maximum(0.0, 1.0 - x)
  a = KEYS_CUBIC_A
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resize_weights(
  in_size: int,
  out_size: int,
  start: float | np.ndarray = 0.0,
  length: float | np.ndarray | None = None,
  method: str = "bilinear",
) -> np.ndarray:
  """Interpolation matrices ``[..., out_size, in_size]`` sampling windows [start, start+length).

  Output pixel ``i`` is centred at input coordinate ``start + (i + 0.5) * length / out_size``
  (pixel ``j`` covers [j, j + 1)). Bilinear weights use a triangle kernel widened by
  ``max(length / out_size, 1)``; bicubic weights Keys' kernel, not widened. Each row is
  normalized to sum to 1 (a row with no input pixel inside the kernel takes the nearest
  pixel), so taps past the border are dropped, as in ``jax.image.resize``.

  Args:
    in_size: input length along the axis.
    out_size: output length.
    start: window start(s) in input pixels; an array gives a batch of matrices.
    length: window length(s); default the whole axis.
    method: one of ``RESIZE_METHODS``.
  """
  if method not in RESIZE_METHODS:
    raise ValueError(f"unknown resize method {method!r}; allowed: {', '.join(RESIZE_METHODS)}")
  start = np.asarray(start, np.float64)
  length = np.asarray(in_size if length is None else length, np.float64) + np.zeros_like(start)
  scale = length / out_size
  widen = np.maximum(scale, 1.0) if method == "bilinear" else np.ones_like(scale)
  width = widen[..., None, None]
  centres = start[..., None] + (np.arange(out_size) + 0.5) * scale[..., None] - 0.5
  taps = np.arange(in_size, dtype=np.float64)
  w = _kernel((taps - centres[..., None]) / width, method)
  sums = w.sum(axis=-1, keepdims=True)
  nearest = np.clip(np.round(centres), 0, in_size - 1)[..., None] == taps
  w = np.where(sums > 0, w / np.where(sums > 0, sums, 1.0), nearest)
  return w.astype(np.float32)


def resize_batch(images: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
  """Resizes ``[B, H, W, C]`` images to ``[B, size, size, C]`` float32 (see ``resize_weights``)."""
  _, h, w, _ = images.shape
  x = images.astype(np.float32)
  if (h, w) == (size, size):
    return x
  b, c = x.shape[0], x.shape[-1]
  wy, wx = resize_weights(h, size, method=method), resize_weights(w, size, method=method)
  y = np.matmul(wy, x.reshape(b, h, w * c)).reshape(b * size, w, c)
  return np.matmul(wx, y).reshape(b, size, size, c)


def crop_resize(
  images: np.ndarray, boxes: np.ndarray, size: int, method: str = "bilinear"
) -> np.ndarray:
  """Crops ``boxes[b] = (y0, x0, h, w)`` (pixels) of ``[B, H, W, C]`` and resizes to ``size``.

  Returns float32 ``[B, size, size, C]``.
  """
  b, h, w, c = images.shape
  boxes = np.asarray(boxes, np.float64)
  wy = resize_weights(h, size, boxes[:, 0], boxes[:, 2], method)  # [B, S, H]
  wx = resize_weights(w, size, boxes[:, 1], boxes[:, 3], method)  # [B, T, W]
  y = np.matmul(wy, images.astype(np.float32).reshape(b, h, w * c)).reshape(b, size, w, c)
  return np.matmul(wx[:, None], y)  # [B, S, T, C]


def pad_crop_flip(images: np.ndarray, u: np.ndarray, padding: int = 4) -> np.ndarray:
  """CIFAR-style augmentation: zero-pad by ``padding``, random crop back, random h-flip.

  Args:
    images: ``[B, H, W, C]`` array.
    u: ``[B, >=3]`` uniform draws: row offset, column offset, flip (flip when < 0.5).
    padding: pixels of zero padding on each side.

  Returns:
    Array of the same shape and dtype.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dy = np.minimum((u[:, 0] * (2 * padding + 1)).astype(int), 2 * padding)
  dx = np.minimum((u[:, 1] * (2 * padding + 1)).astype(int), 2 * padding)
  flip = u[:, 2] < 0.5
  rows = dy[:, None] + np.arange(h)[None, :]
  cols_fwd = np.arange(w)[None, :]
  cols = dx[:, None] + np.where(flip[:, None], w - 1 - cols_fwd, cols_fwd)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def inception_boxes(
  u: np.ndarray,
  heights: np.ndarray,
  widths: np.ndarray,
  area_range: tuple[float, float] = INCEPTION_AREA,
  aspect_range: tuple[float, float] = INCEPTION_RATIOS,
) -> np.ndarray:
  """Samples Inception-style crop boxes ``[B, 4] = (y0, x0, h, w)`` in integer pixels.

  Each of ``INCEPTION_ATTEMPTS`` attempts draws an area fraction in ``area_range`` and a
  log-uniform aspect ratio (w / h) in ``aspect_range``; the first box that fits is used.
  If none fits, the fallback is the largest centred box with aspect ratio clipped to range.

  Args:
    u: ``[B, >= 4 * INCEPTION_ATTEMPTS]`` uniform draws.
    heights: ``[B]`` image heights.
    widths: ``[B]`` image widths.
    area_range: range of the crop area as a fraction of the image area.
    aspect_range: range of the crop aspect ratio.
  """
  hs, ws = np.asarray(heights, np.float64)[:, None], np.asarray(widths, np.float64)[:, None]
  n = INCEPTION_ATTEMPTS
  area = (area_range[0] + u[:, 0:n] * (area_range[1] - area_range[0])) * hs * ws
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  aspect = np.exp(log_lo + u[:, n : 2 * n] * (log_hi - log_lo))
  cw = np.round(np.sqrt(area * aspect))
  ch = np.round(np.sqrt(area / aspect))
  fits = (cw >= 1) & (ch >= 1) & (cw <= ws) & (ch <= hs)
  y0 = np.floor(u[:, 2 * n : 3 * n] * (hs - ch + 1))
  x0 = np.floor(u[:, 3 * n : 4 * n] * (ws - cw + 1))
  first = np.argmax(fits, axis=1)
  rows = np.arange(len(u))
  boxes = np.stack([y0[rows, first], x0[rows, first], ch[rows, first], cw[rows, first]], 1)
  # Fallback: centred box of the whole image with its aspect ratio clipped to the range.
  hs1, ws1 = hs[:, 0], ws[:, 0]
  ratio = ws1 / hs1
  fb_w = np.where(ratio > aspect_range[1], np.round(hs1 * aspect_range[1]), ws1)
  fb_h = np.where(ratio < aspect_range[0], np.round(ws1 / aspect_range[0]), hs1)
  fallback = np.stack([(hs1 - fb_h) // 2, (ws1 - fb_w) // 2, fb_h, fb_w], 1)
  return np.where(fits.any(axis=1)[:, None], boxes, fallback)


def centre_boxes(heights: np.ndarray, widths: np.ndarray, crop_fraction: float) -> np.ndarray:
  """Centred square boxes ``[B, 4] = (y0, x0, h, w)`` of side ``crop_fraction * min(h, w)``."""
  heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
  side = crop_fraction * np.minimum(heights, widths)
  return np.stack([(heights - side) / 2, (widths - side) / 2, side, side], axis=1)


def flip_where(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Horizontally flips the examples of ``[B, H, W, C]`` where ``flip`` is True."""
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Maps pixel values in [0, 255] to ``(x / 255 - mean) / std`` per channel, float32."""
  mean = np.asarray(mean, np.float32) * 255.0
  inv = 1.0 / (np.asarray(std, np.float32) * 255.0)
  images = np.asarray(images)
  # One float32 copy, then in place; over [pixels, C] (broadcasting into [B, H, W, C] is
  # several times slower in numpy).
  out = np.subtract(images.reshape(-1, images.shape[-1]), mean, dtype=np.float32)
  out *= inv
  return out.reshape(images.shape)


def mix_inputs_per_output(mixup_alpha: float, cutmix_alpha: float) -> int:
  """Raw examples drawn per output example: 2 when MixUp or CutMix is on (each output
  mixes two raw examples, as in the reference implementation), else 1."""
  return 2 if mixup_alpha > 0 or cutmix_alpha > 0 else 1


def _cutmix_masks(
  rng: np.random.Generator, count: int, height: int, width: int, alpha: float
) -> np.ndarray:
  """``count`` boolean masks ``[count, H, W]``, True inside a random box (the kept image).

  The box is centred on a uniform pixel; its sides are ``int(sqrt(1 - u) * H)`` and
  ``int(sqrt(1 - u) * W)`` with ``u ~ Beta(alpha, alpha)`` (uniform for alpha 1), and it is
  clipped at the border, so the kept area is about ``1 - u`` of the image.
  """
  u = rng.beta(alpha, alpha, size=count)
  cy, cx = rng.integers(height, size=count), rng.integers(width, size=count)
  side = np.sqrt(1.0 - u)
  half_h, half_w = (side * height).astype(int) // 2, (side * width).astype(int) // 2
  y0, y1 = np.clip(cy - half_h, 0, height), np.clip(cy + half_h, 0, height)
  x0, x1 = np.clip(cx - half_w, 0, width), np.clip(cx + half_w, 0, width)
  rows = np.arange(height)[None, :, None]
  cols = np.arange(width)[None, None, :]
  inside_y = (rows >= y0[:, None, None]) & (rows < y1[:, None, None])
  inside_x = (cols >= x0[:, None, None]) & (cols < x1[:, None, None])
  return inside_y & inside_x


def mix_batch(
  images: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  rng: np.random.Generator,
  mixup_alpha: float = 0.0,
  cutmix_alpha: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) as the reference implementation.

  ``2B`` raw examples give ``B`` mixed ones. With both on, the raw batch is cut into four
  quarters of ``B / 2``: example ``i`` of the first quarter is mixed with example ``i`` of
  the second by MixUp, example ``i`` of the third with example ``i`` of the fourth by
  CutMix, and the output is the MixUp half followed by the CutMix half. With one of them
  on, the first half is mixed with the second half by it. MixUp draws one
  ``lam ~ Beta(mixup_alpha, mixup_alpha)`` per output example: ``lam * a + (1 - lam) * b``.
  CutMix draws one box per output example (``_cutmix_masks``): pixels inside show ``a``,
  outside ``b``, and ``a``'s label weight is the box's share of the pixels. Soft labels are
  ``w * onehot(a) + (1 - w) * onehot(b)``; label smoothing is applied later, in the loss.

  Args:
    images: ``[2B, H, W, C]`` float images (already augmented and normalized).
    labels: ``[2B]`` integer labels.
    num_classes: number of classes of the one-hot targets.
    rng: numpy generator (one per batch).
    mixup_alpha: Beta parameter of MixUp; 0 disables it.
    cutmix_alpha: Beta parameter of the CutMix area; 0 disables it.

  Returns:
    ``(images [B, H, W, C], soft_labels float32[B, num_classes])``; unchanged images and
    one-hot labels when both alphas are 0.

  Raises:
    ValueError: an odd raw batch, or with both on, a raw batch not a multiple of 4.
  """
  onehot = np.eye(num_classes, dtype=np.float32)[labels]
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, onehot
  kinds = [k for k, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if alpha > 0]
  if len(images) % (2 * len(kinds)):
    raise ValueError(
      f"{' and '.join(kinds)} needs a raw batch that is a multiple of "
      f"{2 * len(kinds)}, got {len(images)}"
    )
  q = len(images) // (2 * len(kinds))
  out_images, out_labels = [], []
  for index, kind in enumerate(kinds):
    a = slice(2 * index * q, (2 * index + 1) * q)
    b = slice((2 * index + 1) * q, (2 * index + 2) * q)
    if kind == "mixup":
      weight = rng.beta(mixup_alpha, mixup_alpha, size=q).astype(np.float32)
      w = weight[:, None, None, None]
      out_images.append(w * images[a] + (1.0 - w) * images[b])
    else:
      _, h, width, _ = images.shape
      mask = _cutmix_masks(rng, q, h, width, cutmix_alpha)
      weight = mask.mean(axis=(1, 2)).astype(np.float32)
      out_images.append(np.where(mask[..., None], images[a], images[b]))
    out_labels.append(weight[:, None] * onehot[a] + (1.0 - weight[:, None]) * onehot[b])
  mixed = np.concatenate(out_images).astype(images.dtype)
  return mixed, np.concatenate(out_labels).astype(np.float32)
