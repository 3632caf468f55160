"""``nfresnet.pooling.max_pool``: values and gradients equal ``hk.max_pool``'s."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfresnet import pooling

CASES = [
  # (input shape, window, stride, padding)
  ((2, 16, 16, 8), 3, 2, "SAME"),  # The ImageNet stem's pool.
  ((2, 7, 9, 4), 3, 2, "SAME"),  # Odd sizes: padding on both sides.
  ((2, 8, 8, 4), 3, 2, "VALID"),
  ((2, 8, 8, 4), 2, 2, "SAME"),  # Windows that do not overlap.
  ((2, 6, 6, 4), 3, 1, "SAME"),  # Stride 1: one phase, every tap overlaps.
  ((1, 9, 9, 2), 5, 3, "SAME"),
]


def reference(x, window, stride, padding):
  return hk.max_pool(x, (1, window, window, 1), (1, stride, stride, 1), padding)


@functools.cache
def value_and_grad(fn, window, stride, padding):
  """Jitted ``(sum(pool(x) * g), d/dx)`` for a pooling function."""

  def loss(x, g):
    return jnp.sum(fn(x, window, stride, padding) * g)

  return jax.jit(jax.value_and_grad(loss))


def inputs(shape, window, stride, padding, ties: bool):
  x = jax.random.normal(jax.random.key(0), shape)
  if ties:  # Many equal maxima: windows of a constant, and clipped values.
    x = jnp.maximum(x, 0.3).at[:, :3, :3].set(1.0)
  g = jax.random.normal(jax.random.key(1), reference(x, window, stride, padding).shape)
  return x, g


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("shape", "window", "stride", "padding"), CASES)
def test_value_and_gradient_equal_haiku(shape, window, stride, padding, ties):
  x, g = inputs(shape, window, stride, padding, ties)
  ours = value_and_grad(pooling.max_pool, window, stride, padding)(x, g)
  theirs = value_and_grad(reference, window, stride, padding)(x, g)
  np.testing.assert_array_equal(
    pooling.max_pool(x, window, stride, padding), reference(x, window, stride, padding)
  )
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
  # Each output's gradient goes to one input (the first maximum of its window); only the
  # order in which overlapping windows add up differs.
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-6)
  assert int(jnp.sum(ours[1] != 0)) == int(jnp.sum(theirs[1] != 0))


def test_native_gradient_equals_phase_gradient():
  """The GPU/TPU branch (XLA's own gradient) and the CPU branch agree."""
  shape, window, stride, padding = CASES[1]
  x, g = inputs(shape, window, stride, padding, ties=True)
  pooled = pooling._reduce(x, window, stride, padding)
  args = (x, pooled, g, window, stride, padding)
  np.testing.assert_allclose(
    pooling._phase_gradient(*args), pooling._native_gradient(*args), rtol=1e-6, atol=1e-6
  )


def test_bfloat16_gradient_keeps_dtype():
  x, g = inputs((2, 8, 8, 4), 3, 2, "SAME", ties=False)
  x, g = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  grad = jax.grad(lambda v: jnp.sum(pooling.max_pool(v) * g).astype(jnp.float32))(x)
  assert grad.dtype == jnp.bfloat16
  expected = jax.grad(lambda v: jnp.sum(reference(v, 3, 2, "SAME") * g).astype(jnp.float32))(x)
  np.testing.assert_allclose(grad.astype(np.float32), expected.astype(np.float32), atol=2e-2)


def test_cpu_gradient_has_no_window_reduction():
  """On CPU the gradient is built from slices and pads: no (variadic) reduce-window left."""
  x, g = inputs((2, 16, 16, 8), 3, 2, "SAME", ties=False)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(pooling.max_pool(v) * g)))
  hlo = grad.lower(x).compile().as_text()
  assert hlo.count("reduce-window(") == 1  # The forward pass only.


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"padding": "FULL"}, "padding='FULL'"),
    ({"window": 0}, "window=0"),
    ({"stride": 0}, "stride=0"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), **kwargs)
