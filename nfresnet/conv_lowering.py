"""How a convolution is lowered: ``lax.conv``, or matrix products on small maps on CPU.

XLA:CPU runs matrix products close to the machine's peak but some
convolutions far below it: 1x1 convolutions (their weight gradients above all)
and 3x3 convolutions with tiny output maps (2x2 or 1x1, the last stages at
32 px), which fall to generic kernels 10-40x slower than the same arithmetic as
matrix products. An ungrouped convolution is exactly a sum of ``kh * kw``
matrix products of shifted, strided views of the zero-padded input,
``out = sum_ij x_pad[:, i::s, j::s] @ W[i, j]`` (one product for a 1x1 kernel),
and all of its gradients are then matrix products too. ``conv2d`` uses that
form for those two cases, on CPU only (``jax.lax.platform_dependent``): GPU and
TPU keep their native convolutions. Inside loop bodies (the scanned blocks of
``nfresnet.stacking``) XLA:CPU runs every convolution through its generic
kernels, 10x slower at 56x56 than outside a loop, so ``loop_conv2d`` takes
matrix products for every ungrouped convolution up to 3x3 there. Both forms
compute the same sums; only the float summation order differs. Measurements:
``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# On CPU, 1x1 convs always, and convs up to 3x3 whose output map has at most this
# many pixels, take matrix products. Measured per conv (benchmarks/NOTES.md): 3x3 at
# 2x2 or 1x1 outputs 10-50x faster as products, at 3x3-4x4 outputs even, larger slower.
SMALL_MAP_PIXELS = 4
MAX_SHIFTED_KERNEL = 3
PADDINGS = ("SAME", "VALID")


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str, groups: int) -> jax.Array:
  """NHWC x HWIO ``lax.conv_general_dilated`` in the dtype of ``x``."""
  return jax.lax.conv_general_dilated(
    x,
    kernel.astype(x.dtype),
    window_strides=(stride, stride),
    padding=padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


def output_size_and_padding(
  size: int, kernel: int, stride: int, padding: str
) -> tuple[int, int, int]:
  """Output length and (low, high) zero padding of one spatial axis (SAME or VALID)."""
  if padding == "VALID":
    return (size - kernel) // stride + 1, 0, 0
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, total // 2, total - total // 2


def pixel_product(x: jax.Array, weight: jax.Array) -> jax.Array:
  """``x @ weight`` over the last axis of NHWC ``x``, as one 2-D product of ``(N*H*W, C)``.

  XLA:CPU runs the 2-D form (and its gradients: the weight gradient contracts one
  axis instead of three) 1.1-2.6x faster than the same ``jnp.dot`` on the 4-D
  array, which transposes the output gradient first (benchmarks/NOTES.md).
  """
  flat = x.reshape(-1, x.shape[-1])
  return jnp.dot(flat, weight).reshape(*x.shape[:-1], weight.shape[-1])


def shifted_dots_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
  """Ungrouped NHWC x HWIO convolution as ``sum_ij x_pad[:, i::s, j::s] @ W[i, j]``."""
  kh, kw = kernel.shape[:2]
  ho, top, bottom = output_size_and_padding(x.shape[1], kh, stride, padding)
  wo, left, right = output_size_and_padding(x.shape[2], kw, stride, padding)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kernel = kernel.astype(x.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]
      term = pixel_product(tap, kernel[i, j])
      out = term if out is None else out + term
  return out


def products_apply(kernel_shape: tuple[int, ...], padding: str, groups: int) -> bool:
  """Whether the matrix-product form exists: ungrouped, SAME/VALID, kernel up to 3x3."""
  return groups == 1 and padding in PADDINGS and max(kernel_shape[:2]) <= MAX_SHIFTED_KERNEL


def prefers_shifted_dots(
  x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: str, groups: int
) -> bool:
  """Whether the CPU lowering of this convolution (outside loops) should be products."""
  if not products_apply(kernel_shape, padding, groups):
    return False
  kh, kw = kernel_shape[:2]
  if kh == kw == 1:
    return True
  ho = output_size_and_padding(x_shape[1], kh, stride, padding)[0]
  wo = output_size_and_padding(x_shape[2], kw, stride, padding)[0]
  return ho * wo <= SMALL_MAP_PIXELS


def _lowered(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str, groups: int, products_on_cpu: bool
) -> jax.Array:
  native = functools.partial(xla_conv, stride=stride, padding=padding, groups=groups)
  if not products_on_cpu:
    return native(x, kernel)
  shifted = functools.partial(shifted_dots_conv, stride=stride, padding=padding)
  return jax.lax.platform_dependent(x, kernel, cpu=shifted, default=native)


def conv2d(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str, feature_group_count: int
) -> jax.Array:
  """NHWC x HWIO convolution in the dtype of ``x``, lowered per platform (module doc)."""
  products = prefers_shifted_dots(x.shape, kernel.shape, stride, padding, feature_group_count)
  return _lowered(x, kernel, stride, padding, feature_group_count, products)


def loop_conv2d(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str, feature_group_count: int
) -> jax.Array:
  """``conv2d`` for loop bodies: on CPU, matrix products whatever the map size."""
  products = products_apply(kernel.shape, padding, feature_group_count)
  return _lowered(x, kernel, stride, padding, feature_group_count, products)
