"""Scaled Weight Standardization convolution (paper Section 4.2).

For output channel ``i`` with fan-in ``N = kh * kw * Cin / groups``:
``W_hat_i = gain_i * (W_i - mean(W_i)) / sqrt(max(N * var(W_i), eps))``.
Each standardized row sums to zero, so an input offset shared by all positions
is cancelled exactly, and ``sum_j W_hat_ij^2 = gain_i^2``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.conv_lowering import conv2d

WS_EPSILON = 1e-4  # Floor on N * var(W), as in the reference implementation (docs/paper_map.md).


def standardize_kernel(kernel: jax.Array, gain: jax.Array, eps: float = WS_EPSILON) -> jax.Array:
  """Scaled-WS kernel in float32.

  Args:
    kernel: HWIO kernel; grouped kernels have ``I = Cin / groups``.
    gain: per-output-channel gain, shape ``(O,)``.
    eps: floor on ``fan_in * var``.

  Returns:
    The standardized float32 kernel, same shape as ``kernel``.
  """
  shape = kernel.shape
  rows = kernel.astype(jnp.float32).reshape(-1, shape[-1])  # (fan-in, O): one column per output.
  return _standardize_rows(rows, gain.astype(jnp.float32), float(eps)).reshape(shape)


# The statistics are taken over the rows of the (fan-in, O) matrix, not over the leading
# axes of the 4-D kernel (the same sums): XLA:CPU differentiates the 4-D reduction 10-20x
# slower, 46 ms vs 4 ms for a 1x1 1024->2048 kernel. The gradient is written out (two
# column sums and one pass) instead of differentiated through ``jnp.var``: another 1.3x
# on large kernels (benchmarks/NOTES.md).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _standardize_rows(rows: jax.Array, gain: jax.Array, eps: float) -> jax.Array:
  return _standardize_rows_fwd(rows, gain, eps)[0]


def _standardize_rows_fwd(rows, gain, eps):
  mean = jnp.mean(rows, axis=0)
  fan_var = jnp.var(rows, axis=0) * rows.shape[0]  # N * var(W) = sum of squared deviations.
  inv_std = jax.lax.rsqrt(jnp.maximum(fan_var, eps))
  out = (rows - mean) * (inv_std * gain)
  return out, (rows, mean, inv_std, gain, fan_var > eps)


def _standardize_rows_bwd(eps, residuals, grad):
  """With ``c = W - mean``, ``r = 1 / sqrt(N var)`` and ``out = c * r * gain``:
  ``d gain = r * sum(g c)`` and ``dW = r gain (g - mean(g)) - r^3 gain sum(g c) c``
  (the last term only where ``N var`` is above ``eps``)."""
  del eps
  rows, mean, inv_std, gain, unclamped = residuals
  centred = rows - mean
  grad_dot_centred = jnp.sum(grad * centred, axis=0)
  d_gain = inv_std * grad_dot_centred
  through_var = jnp.where(unclamped, gain * inv_std**3 * grad_dot_centred, 0.0)
  d_rows = inv_std * gain * (grad - jnp.mean(grad, axis=0)) - through_var * centred
  return d_rows, d_gain


_standardize_rows.defvjp(_standardize_rows_fwd, _standardize_rows_bwd)


# ``(x, kernel, stride, padding, feature_group_count) -> output``, e.g. ``conv2d``.
Lowering = Callable[[jax.Array, jax.Array, int, str, int], jax.Array]

HE_NORMAL = hk.initializers.VarianceScaling(2.0, "fan_in", "normal")
FAN_IN_NORMAL = hk.initializers.VarianceScaling(1.0, "fan_in", "normal")


class FanInTruncatedNormal(hk.initializers.Initializer):
  """Haiku's default conv/linear init: truncated normal (+-2 std) of std ``1 / sqrt(fan_in)``.

  ``hk.Conv2D`` and ``hk.Linear`` use it when no ``w_init`` is given, and so do the
  reference implementation's BN-ResNet and SkipInit convs. The truncation is not
  corrected, so the realised standard deviation is about ``0.88 / sqrt(fan_in)``.
  """

  def __call__(self, shape, dtype) -> jax.Array:
    fan_in = math.prod(shape[:-1])
    return hk.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(fan_in))(shape, dtype)


HAIKU_DEFAULT = FanInTruncatedNormal()
CONV_INITS: dict[str, hk.initializers.Initializer] = {"haiku": HAIKU_DEFAULT, "he": HE_NORMAL}
"""``conv_init`` choices of the plain-conv baselines: "haiku" (the reference's, default)
or "he" (He et al. 2015: normal, variance 2 / fan_in)."""


class Conv2D(hk.Module):
  """NHWC convolution whose parameters are float32 whatever the input dtype.

  The kernel is cast to the input dtype for the convolution, so bf16 inputs run
  a bf16 conv on float32 master weights. Default init is He-normal, the plain
  convs of the paper's "He init" networks and BN baselines.
  """

  def __init__(
    self,
    output_channels: int,
    kernel_shape: int | Sequence[int],
    stride: int = 1,
    padding: str = "SAME",
    feature_group_count: int = 1,
    with_bias: bool = True,
    w_init: hk.initializers.Initializer | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if isinstance(kernel_shape, int):
      kernel_shape = (kernel_shape, kernel_shape)
    self.output_channels = output_channels
    self.kernel_shape = tuple(kernel_shape)
    self.stride = stride
    self.padding = padding
    self.feature_group_count = feature_group_count
    self.with_bias = with_bias
    self.w_init = w_init or HE_NORMAL

  def raw_kernel(self, input_channels: int) -> jax.Array:
    """Creates (or fetches) the float32 HWIO kernel parameter ``w``."""
    if input_channels % self.feature_group_count:
      raise ValueError(
        f"input channels {input_channels} not divisible by "
        f"feature_group_count {self.feature_group_count}"
      )
    shape = self.kernel_shape + (
      input_channels // self.feature_group_count,
      self.output_channels,
    )
    return hk.get_parameter("w", shape, jnp.float32, init=self.w_init)

  def kernel(self, input_channels: int) -> jax.Array:
    """The float32 kernel the convolution uses."""
    return self.raw_kernel(input_channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lowered(x, conv2d)

  def lowered(self, x: jax.Array, lowering: Lowering) -> jax.Array:
    """``lowering(x, kernel, stride, padding, groups)`` plus the float32 bias, if any."""
    out = lowering(x, self.kernel(x.shape[-1]), self.stride, self.padding, self.feature_group_count)
    if not self.with_bias:
      return out
    bias = hk.get_parameter("bias", (self.output_channels,), jnp.float32, init=jnp.zeros)
    return out + bias.astype(out.dtype)


class WSConv2D(Conv2D):
  """2D convolution with Scaled Weight Standardization (paper Section 4.2).

  Parameters are float32: raw kernel ``w`` (fan-in normal init), ``gain`` (init
  1) and ``bias`` (init 0), one gain and bias per output channel. The kernel is
  standardized in float32 and cast to the input dtype for the conv.
  """

  def __init__(
    self,
    output_channels: int,
    kernel_shape: int | Sequence[int],
    stride: int = 1,
    padding: str = "SAME",
    feature_group_count: int = 1,
    with_bias: bool = True,
    eps: float = WS_EPSILON,
    w_init: hk.initializers.Initializer | None = None,
    name: str | None = None,
  ):
    super().__init__(
      output_channels,
      kernel_shape,
      stride=stride,
      padding=padding,
      feature_group_count=feature_group_count,
      with_bias=with_bias,
      w_init=w_init or FAN_IN_NORMAL,
      name=name,
    )
    self.eps = eps

  def kernel(self, input_channels: int) -> jax.Array:
    """The standardized kernel ``W_hat`` (float32)."""
    w = self.raw_kernel(input_channels)
    gain = hk.get_parameter("gain", (self.output_channels,), jnp.float32, init=jnp.ones)
    return standardize_kernel(w, gain, self.eps)


def lowering_override(lowering: Lowering) -> contextlib.AbstractContextManager:
  """Inside, every ``Conv2D``/``WSConv2D`` call computes with ``lowering``.

  Same parameters and kernel (standardized, or frozen under ``nfresnet.frozen``);
  only how the convolution is computed changes. ``nfresnet.stacking`` uses it
  inside its scans, the benchmarks to force one lowering.
  """

  def interceptor(method, args, kwargs, context):
    if context.method_name != "__call__" or not isinstance(context.module, Conv2D):
      return method(*args, **kwargs)
    return context.module.lowered(*args, lowering=lowering, **kwargs)

  return hk.intercept_methods(interceptor)
