"""Alternative convolution lowerings, switched on from outside the model for benchmarking.

XLA:CPU runs 1x1 convolutions (two of the three convs of every bottleneck, and
every projection shortcut) far below its matrix-multiply speed, and their
weight gradients worst of all (see ``benchmarks/NOTES.md``). A 1x1 convolution
with stride ``s`` and SAME padding is exactly a matrix product on the
subsampled input, ``x[:, ::s, ::s, :] @ W[0, 0]``, so ``dot_1x1()`` intercepts
every ``nfresnet`` ``Conv2D``/``WSConv2D`` call with a 1x1 kernel and computes
it with ``jnp.dot`` (same parameters, same kernel standardization, same
result up to float32 summation order). Other convolutions are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.ws_conv import Conv2D

CONV_IMPLS = ("xla", "dot1x1", "shifted_dots")


def conv_1x1_as_dot(conv: Conv2D, x: jax.Array) -> jax.Array:
  """``conv(x)`` for a 1x1, ungrouped ``conv`` as a matrix product (call in its scope)."""
  stride = conv.stride
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  kernel = conv.kernel(x.shape[-1])[0, 0].astype(x.dtype)
  out = jnp.dot(x, kernel)
  if conv.with_bias:
    bias = hk.get_parameter("bias", (conv.output_channels,), jnp.float32, init=jnp.zeros)
    out = out + bias.astype(out.dtype)
  return out


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """Output size and (low, high) padding of a SAME convolution along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, total // 2, total - total // 2


def conv_as_shifted_dots(conv: Conv2D, x: jax.Array) -> jax.Array:
  """``conv(x)`` (ungrouped, SAME) as a sum of ``kh * kw`` products of shifted inputs.

  ``out = sum_ij x_pad[:, i::s, j::s, :] @ W[i, j]``: every gradient is then a
  matrix product too (the weight gradient ``x_shift^T @ g`` included), which
  XLA:CPU runs much faster than its convolution kernels at small spatial sizes.
  """
  kh, kw = conv.kernel_shape
  s = conv.stride
  kernel = conv.kernel(x.shape[-1]).astype(x.dtype)
  ho, top, bottom = _same_padding(x.shape[1], kh, s)
  wo, left, right = _same_padding(x.shape[2], kw, s)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + (ho - 1) * s + 1 : s, j : j + (wo - 1) * s + 1 : s, :]
      term = jnp.dot(tap, kernel[i, j])
      out = term if out is None else out + term
  if conv.with_bias:
    bias = hk.get_parameter("bias", (conv.output_channels,), jnp.float32, init=jnp.zeros)
    out = out + bias.astype(out.dtype)
  return out


def _is_small_ungrouped(module: hk.Module) -> bool:
  return (
    isinstance(module, Conv2D)
    and max(module.kernel_shape) <= 3
    and module.feature_group_count == 1
    and module.padding == "SAME"
  )


def _shifted_interceptor(method, args, kwargs, context):
  if context.method_name == "__call__" and _is_small_ungrouped(context.module):
    if context.module.kernel_shape == (1, 1):
      return conv_1x1_as_dot(context.module, *args, **kwargs)
    return conv_as_shifted_dots(context.module, *args, **kwargs)
  return method(*args, **kwargs)


@contextlib.contextmanager
def shifted_dots() -> Iterator[None]:
  """Inside, every ungrouped SAME convolution up to 3x3 runs as matrix products."""
  with hk.intercept_methods(_shifted_interceptor):
    yield


def _is_pointwise(module: hk.Module) -> bool:
  return (
    isinstance(module, Conv2D)
    and module.kernel_shape == (1, 1)
    and module.feature_group_count == 1
    and module.padding in ("SAME", "VALID")
  )


def _dot_interceptor(method, args, kwargs, context):
  if context.method_name == "__call__" and _is_pointwise(context.module):
    return conv_1x1_as_dot(context.module, *args, **kwargs)
  return method(*args, **kwargs)


@contextlib.contextmanager
def dot_1x1() -> Iterator[None]:
  """Inside, every 1x1 ``nfresnet`` convolution runs as ``jnp.dot``."""
  with hk.intercept_methods(_dot_interceptor):
    yield


def conv_context(impl: str) -> contextlib.AbstractContextManager:
  """The context for ``impl`` ("xla": no change)."""
  contexts = {"dot1x1": dot_1x1, "shifted_dots": shifted_dots}
  return contexts[impl]() if impl in contexts else contextlib.nullcontext()
