"""Max pooling whose gradient is cheap on CPU (the ImageNet stem's 3x3 stride-2 pool).

The forward pass is ``lax.reduce_window`` (what ``hk.max_pool`` computes). Its
automatic gradient on XLA:CPU is a variadic window reduction over value and
index arrays, 10-20x slower than the forward pass: 52 ms of a 0.9 s NF-ResNet-50
training step at 32 px, 347 ms of a 3.7 s step at 224 px (benchmarks/NOTES.md).
On CPU the gradient here is computed from the window taps instead: tap ``(i, j)``
of output ``(a, b)`` reads padded input ``(s*a + i, s*b + j)``; each output's
gradient goes to the first tap, in row-major window order, that equals the
maximum (as XLA's select-and-scatter does); and the padded input gradient is
assembled phase by phase (rows ``s*a + p``, columns ``s*b + q``), each phase a
sum of shifted tap gradients at the output's size, then interleaved by one
reshape. GPU and TPU keep XLA's native gradient (``jax.lax.platform_dependent``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nfresnet.conv_lowering import PADDINGS, output_size_and_padding


def _pads(x_shape, window: int, stride: int, padding: str):
  ho, top, bottom = output_size_and_padding(x_shape[1], window, stride, padding)
  wo, left, right = output_size_and_padding(x_shape[2], window, stride, padding)
  return (ho, wo), ((0, 0), (top, bottom), (left, right), (0, 0))


def _reduce(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
  _, pads = _pads(x.shape, window, stride, padding)
  init = np.array(-np.inf, x.dtype)  # Concrete, so that XLA sees a max-pool monoid.
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  return jax.lax.reduce_window(x, init, jax.lax.max, dims, strides, pads)


def _tap_gradients(x, pooled, g, window: int, stride: int, padding: str):
  """``{(i, j): g where tap (i, j) is its window's first maximum, else 0}``."""
  (ho, wo), pads = _pads(x.shape, window, stride, padding)
  xp = jnp.pad(x, pads, constant_values=-jnp.inf)
  taken = jnp.zeros(pooled.shape, jnp.bool_)
  grads = {}
  for i in range(window):
    for j in range(window):
      tap = xp[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]
      first = (tap == pooled) & ~taken
      taken = taken | first
      grads[i, j] = jnp.where(first, g, jnp.zeros((), g.dtype))
  return grads


def _phase_gradient(x, pooled, g, window: int, stride: int, padding: str) -> jax.Array:
  """The input gradient from the tap gradients, assembled phase by phase (module doc)."""
  grads = _tap_gradients(x, pooled, g, window, stride, padding)
  reach = (window - 1) // stride  # Extra rows (columns) of a phase beyond the output's.

  def shifted(a, di, dj):  # a[:, r - di, c - dj] on the phase grid, zeros shifted in.
    return jnp.pad(a, ((0, 0), (di, reach - di), (dj, reach - dj), (0, 0)))

  rows = []
  for p in range(stride):
    phases = []
    for q in range(stride):
      terms = [
        shifted(grads[i, j], i // stride, j // stride)
        for i in range(p, window, stride)
        for j in range(q, window, stride)
      ]
      grid = (g.shape[0], g.shape[1] + reach, g.shape[2] + reach, g.shape[3])
      phases.append(functools.reduce(jnp.add, terms) if terms else jnp.zeros(grid, g.dtype))
    rows.append(jnp.stack(phases, axis=3))  # [N, R, C', stride, channels]
  full = jnp.stack(rows, axis=2)  # [N, R, stride, C', stride, channels]
  n, r, _, c, _, channels = full.shape
  full = full.reshape(n, r * stride, c * stride, channels)
  _, pads = _pads(x.shape, window, stride, padding)
  top, left = pads[1][0], pads[2][0]
  return full[:, top : top + x.shape[1], left : left + x.shape[2]]


def _native_gradient(x, pooled, g, window: int, stride: int, padding: str) -> jax.Array:
  del pooled
  return jax.vjp(lambda v: _reduce(v, window, stride, padding), x)[1](g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
  return _reduce(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
  pooled = _reduce(x, window, stride, padding)
  return pooled, (x, pooled)


def _max_pool_bwd(window, stride, padding, residuals, g):
  x, pooled = residuals
  kwargs = dict(window=window, stride=stride, padding=padding)
  cpu = functools.partial(_phase_gradient, **kwargs)
  native = functools.partial(_native_gradient, **kwargs)
  return (jax.lax.platform_dependent(x, pooled, g, cpu=cpu, default=native),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: str = "SAME") -> jax.Array:
  """Square max pooling of NHWC ``x``; equals ``hk.max_pool`` in value and gradient.

  Args:
    x: NHWC input.
    window: window size along height and width.
    stride: stride along height and width.
    padding: "SAME" or "VALID".

  Returns:
    The pooled NHWC array.
  """
  if padding not in PADDINGS:
    raise ValueError(f"padding={padding!r}: expected one of {', '.join(PADDINGS)}")
  if window < 1 or stride < 1:
    raise ValueError(f"window={window}, stride={stride}: both must be at least 1")
  return _max_pool(x, window, stride, padding)
