"""Scaled Weight Standardization (paper Section 4.2)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf
from benchmarks import cpu_ops


def _apply(module_fn, x, rng=0):
  f = hk.transform(lambda v: module_fn()(v))
  params = f.init(jax.random.key(rng), x)
  return params, f.apply(params, None, x)


def test_standardized_rows_sum_to_zero_with_norm_gain_squared():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 5, 7)) * 3.0 + 1.5
  gain = jax.random.uniform(jax.random.key(1), (7,), minval=0.5, maxval=2.0)
  w_hat = nf.standardize_kernel(kernel, gain)
  np.testing.assert_allclose(w_hat.sum(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose((w_hat**2).sum(axis=(0, 1, 2)), gain**2, rtol=1e-5)


def test_eps_floor_keeps_constant_kernel_finite():
  w_hat = nf.standardize_kernel(jnp.ones((1, 1, 4, 2)), jnp.ones((2,)))
  np.testing.assert_array_equal(w_hat, 0.0)


def test_constant_input_offset_is_cancelled():
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 6))
  make = lambda: nf.WSConv2D(4, 3, padding="VALID")  # noqa: E731
  f = hk.transform(lambda v: make()(v))
  params = f.init(jax.random.key(3), x)
  out = f.apply(params, None, x)
  shifted = f.apply(params, None, x + 5.0)
  np.testing.assert_allclose(shifted, out, atol=1e-4)


def test_grouped_conv_standardizes_each_group():
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 8))
  params, out = _apply(lambda: nf.WSConv2D(6, 3, feature_group_count=2, name="conv"), x)
  p = params["conv"]
  assert p["w"].shape == (3, 3, 4, 6)
  w_hat = nf.standardize_kernel(p["w"], p["gain"])
  np.testing.assert_allclose(w_hat.sum(axis=(0, 1, 2)), 0.0, atol=1e-5)
  expected = jax.lax.conv_general_dilated(
    x, w_hat, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_parameters_initial_values_and_float32_under_bf16():
  x = jnp.ones((1, 8, 8, 3), jnp.bfloat16)
  params, out = _apply(lambda: nf.WSConv2D(4, 3, name="conv"), x)
  p = params["conv"]
  assert {k: v.dtype for k, v in p.items()} == {
    "w": jnp.float32,
    "gain": jnp.float32,
    "bias": jnp.float32,
  }
  np.testing.assert_array_equal(p["gain"], 1.0)
  np.testing.assert_array_equal(p["bias"], 0.0)
  assert out.dtype == jnp.bfloat16


def test_plain_conv_is_he_normal_and_float32_under_bf16():
  x = jnp.ones((1, 8, 8, 64), jnp.bfloat16)
  params, out = _apply(lambda: nf.Conv2D(256, 3, name="conv"), x)
  w = params["conv"]["w"]
  assert w.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  assert float(jnp.std(w)) == pytest.approx(np.sqrt(2.0 / (9 * 64)), rel=0.02)


def test_unit_variance_output_on_unit_gaussian_input():
  x = jax.random.normal(jax.random.key(5), (8, 16, 16, 64))
  _, out = _apply(lambda: nf.WSConv2D(64, 1), x)
  assert float(jnp.mean(jnp.var(out, axis=(0, 1, 2)))) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize(
  ("shape", "constant_column"),
  [((3, 3, 4, 8), False), ((1, 1, 16, 8), False), ((3, 3, 2, 8), True), ((5, 1, 3, 2), False)],
)
def test_gradients_equal_the_textbook_formula(shape, constant_column):
  """The written-out gradient equals JAX's gradient of the formula, for kernel and gain;
  a constant column (``N * var`` below ``eps``) gets the clamped branch's gradient."""
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  kernel = jax.random.normal(k1, shape)
  if constant_column:
    kernel = kernel.at[..., 0].set(0.5)
  gain = 1.0 + 0.1 * jax.random.normal(k2, shape[-1:])
  cotangent = jax.random.normal(k3, shape)

  def pullback(fn):
    out, vjp = jax.vjp(fn, kernel, gain)
    return (out, *vjp(cotangent))

  ours = pullback(nf.standardize_kernel)
  theirs = pullback(cpu_ops.textbook_standardize)
  for a, b in zip(ours, theirs, strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
