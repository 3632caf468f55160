"""Encoded images (JPEG, or any format Pillow reads): decode, crop and resize with Pillow.

Sources whose examples are encoded bytes (``ImageFolderSource``, TFDS datasets of variable
image size such as imagenet2012, read with ``tfds.decode.SkipDecoding``) set
``encoded = True``; the pipeline then never holds a full-size decoded image. Per example:

1. the image size is read from the header (no decoding);
2. the crop box is drawn by the same ``augment.inception_boxes`` (training), or
   ``augment.centre_boxes`` (evaluation), from the same per-example draws as for decoded
   images, so the crop distribution and the determinism are those of the numpy path;
3. ``PIL.Image.draft`` lets the JPEG decoder shrink the image by the largest DCT factor
   ``s`` in ``DCT_SCALES`` for which the crop keeps at least ``size`` pixels on its short
   side (a crop of 100 px for a 224 px output decodes at full size; a 2000 px photo
   cropped whole for 224 px decodes at 1/8);
4. ``Image.resize(..., box=crop / s)`` resamples the crop to ``size x size`` with the
   filter of ``data.resize_method``.

Pillow's filters are anti-aliased when shrinking (the support widens with the scale), like
``augment.resize_weights``' "bilinear"; its "bicubic" also widens when shrinking, where the
numpy "bicubic" does not, so shrunk bicubic crops are slightly smoother than the numpy
path's. Enlarging (the common case for Inception crops of ImageNet) agrees to within
rounding; ``tests/test_input_pipeline.py`` bounds the difference.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
"""Pillow filter of each ``augment.RESIZE_METHODS`` entry."""
DCT_SCALES = (8, 4, 2, 1)
"""Shrink factors the JPEG decoder applies while decoding (``Image.draft``)."""


def image_size(data: bytes) -> tuple[int, int]:
  """``(height, width)`` of an encoded image, read from its header."""
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
  return height, width


def image_sizes(images: list) -> tuple[np.ndarray, np.ndarray]:
  """Heights and widths (float64 ``[B]``) of a list of encoded images."""
  sizes = np.array([image_size(data) for data in images], np.float64).reshape(-1, 2)
  return sizes[:, 0], sizes[:, 1]


def dct_scale(crop_side: float, size: int) -> int:
  """The largest of ``DCT_SCALES`` that keeps ``crop_side / s >= size``."""
  for scale in DCT_SCALES:
    if crop_side >= scale * size:
      return scale
  return 1


def decode_crop_resize(
  data: bytes, box: np.ndarray, size: int, method: str = "bilinear", flip: bool = False
) -> np.ndarray:
  """Decodes ``data``, crops ``box = (y0, x0, h, w)`` (full-size pixels) and resizes it.

  Args:
    data: the encoded image.
    box: the crop in pixels of the full-size image; fractional edges are allowed.
    size: the output side.
    method: one of ``RESAMPLE``.
    flip: mirror the output horizontally.

  Returns:
    uint8 ``[size, size, 3]``.
  """
  y0, x0, height, width = (float(v) for v in box)
  with Image.open(io.BytesIO(data)) as image:
    full_width, full_height = image.size
    scale = 1.0
    shrink = dct_scale(min(height, width), size)
    if shrink > 1:
      drafted = image.draft("RGB", (max(full_width // shrink, 1), max(full_height // shrink, 1)))
      if drafted is not None:  # JPEG: decoded at 1 / scale; other formats: at full size.
        scale = full_width / drafted[1][2]
    if image.mode != "RGB":
      image = image.convert("RGB")
    crop = (x0 / scale, y0 / scale, (x0 + width) / scale, (y0 + height) / scale)
    out = image.resize((size, size), RESAMPLE[method], box=crop)
  if flip:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def decode_crop_resize_batch(
  images: list, boxes: np.ndarray, size: int, method: str, flips: np.ndarray | None = None
) -> np.ndarray:
  """``decode_crop_resize`` over a batch: uint8 ``[B, size, size, 3]``."""
  out = np.empty((len(images), size, size, 3), np.uint8)
  for i, (data, box) in enumerate(zip(images, boxes, strict=True)):
    out[i] = decode_crop_resize(data, box, size, method, bool(flips is not None and flips[i]))
  return out


def decode(data: bytes) -> np.ndarray:
  """The full-size RGB image as uint8 ``[H, W, 3]``."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def encode(image: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of a uint8 ``[H, W, 3]`` image (tests and benchmarks)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()
