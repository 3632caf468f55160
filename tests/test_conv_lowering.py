"""Convolution lowerings: matrix-product forms equal ``lax.conv``; the CPU choice per shape."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet
from benchmarks.conv_impl import CONV_IMPLS, conv_context
from nfresnet.conv_lowering import (
  conv2d,
  loop_conv2d,
  prefers_shifted_dots,
  shifted_dots_conv,
  xla_conv,
)

FAST_COMPILE = {"xla_backend_optimization_level": 0}
CASES = [  # (spatial size, Cin, Cout, kernel, stride, padding)
  (7, 16, 8, 3, 1, "SAME"),
  (8, 16, 8, 3, 2, "SAME"),
  (9, 4, 8, 3, 2, "VALID"),
  (5, 4, 6, 1, 2, "SAME"),
  (6, 3, 5, 2, 1, "SAME"),
  (2, 8, 8, 3, 2, "SAME"),
  (1, 4, 4, 3, 1, "SAME"),
]


def _loss(conv, x, w):
  return jnp.sum(jnp.sin(conv(x, w)))


@pytest.mark.parametrize("size,cin,cout,k,stride,padding", CASES)
def test_shifted_dots_equal_lax_conv_with_gradients(size, cin, cout, k, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) / np.sqrt(k * k * cin)
  native = functools.partial(xla_conv, stride=stride, padding=padding, groups=1)
  shifted = functools.partial(shifted_dots_conv, stride=stride, padding=padding)
  np.testing.assert_allclose(shifted(x, w), native(x, w), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(functools.partial(_loss, f), (0, 1))(x, w) for f in (shifted, native)]
  for got, want in zip(*grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_choice_per_shape():
  # 1x1 kernels always; up to 3x3 only for output maps of at most 2x2.
  assert prefers_shifted_dots((16, 56, 56, 256), (1, 1, 256, 64), 1, "SAME", 1)
  assert prefers_shifted_dots((128, 2, 2, 512), (3, 3, 512, 512), 1, "SAME", 1)
  assert prefers_shifted_dots((128, 4, 4, 256), (3, 3, 256, 256), 2, "SAME", 1)
  assert not prefers_shifted_dots((128, 4, 4, 256), (3, 3, 256, 256), 1, "SAME", 1)
  assert not prefers_shifted_dots((16, 56, 56, 64), (3, 3, 64, 64), 1, "SAME", 1)
  assert not prefers_shifted_dots((2, 2, 2, 16), (3, 3, 2, 16), 1, "SAME", 8)  # Grouped.
  assert not prefers_shifted_dots((2, 2, 2, 3), (7, 7, 3, 64), 2, "SAME", 1)  # Stem.


def _hlo(size, k, stride):
  x = jax.ShapeDtypeStruct((2, size, size, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((k, k, 8, 8), jnp.float32)
  lowered = jax.jit(lambda x, w: conv2d(x, w, stride, "SAME", 1)).lower(x, w)
  return lowered.as_text()


def test_cpu_lowering_is_matrix_products_only_where_chosen():
  assert jax.default_backend() == "cpu"
  for size, k, stride in ((16, 1, 1), (8, 1, 2), (2, 3, 1), (4, 3, 2)):
    text = _hlo(size, k, stride)
    assert "convolution" not in text and "dot_general" in text, (size, k, stride)
  text = _hlo(16, 3, 1)
  assert "convolution" in text and "dot_general" not in text


def _tiny_nf(x):
  return nfresnet.NFResNet(10, 18, width=0.25)(x, True)


@pytest.fixture(scope="module")
def tiny_nf_logits():
  """Loss and gradients of a tiny NF-ResNet-18 (32 px: maps 8x8 down to 1x1) per lowering."""
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  model = hk.transform(_tiny_nf)
  params = model.init(jax.random.key(0), x)
  # A non-zero classifier so that every conv gets a gradient.
  params = jax.tree.map(lambda p: p + 0.01, params)
  results = {}
  for impl in CONV_IMPLS:

    def loss(params, impl=impl):
      with conv_context(impl):
        return jnp.sum(jnp.sin(model.apply(params, None, x)))

    step = jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)
    results[impl] = step(params)
  return results


@pytest.mark.parametrize("impl", ["xla", "shifted_dots"])
def test_forced_lowerings_match_library_choice(tiny_nf_logits, impl):
  (loss, grads), (ref_loss, ref_grads) = tiny_nf_logits[impl], tiny_nf_logits["auto"]
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_loop_lowering_is_matrix_products_at_any_map_size():
  x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32)
  text = jax.jit(lambda x, w: loop_conv2d(x, w, 1, "SAME", 1)).lower(x, w).as_text()
  assert "convolution" not in text and "dot_general" in text
  grouped = jax.ShapeDtypeStruct((3, 3, 2, 8), jnp.float32)
  text = jax.jit(lambda x, w: loop_conv2d(x, w, 1, "SAME", 4)).lower(x, grouped).as_text()
  assert "convolution" in text
