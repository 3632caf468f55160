"""NF residual blocks: identity at init, transition shortcut, stochastic depth, SE."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf
from nfresnet.layout import block_specs

RELU = nf.scaled_activation("relu")


def _specs(in_channels=16, width=16, stride=1, depth=2):
  return block_specs([depth], [width], [stride], in_channels, alpha=0.2)


def _run_block(block_cls, spec, x, is_training=False, **kwargs):
  f = hk.transform(lambda v: block_cls(spec, activation=RELU, **kwargs)(v, is_training))
  params = f.init(jax.random.key(0), x)
  return params, f.apply(params, jax.random.key(1), x)


@pytest.mark.parametrize("block_cls", [nf.NFBottleneckBlock, nf.NFBasicBlock])
def test_non_transition_block_is_identity_with_zero_skip_gain(block_cls):
  spec = _specs()[1]
  assert not spec.use_projection
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 16))
  _, out = _run_block(block_cls, spec, x, use_se=True)
  np.testing.assert_array_equal(out, x)


def test_transition_shortcut_is_strided_conv_of_scaled_activation():
  spec = _specs(in_channels=8, width=16, stride=2)[0]
  assert spec.use_projection and spec.transition
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 8))
  params, out = _run_block(nf.NFBottleneckBlock, spec, x)
  p = params[f"{spec.name}/conv_shortcut"]
  kernel = nf.standardize_kernel(p["w"], p["gain"])
  pre = RELU(x) / spec.beta
  expected = jax.lax.conv_general_dilated(
    pre, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(out, expected + p["bias"], rtol=1e-5, atol=1e-5)
  assert out.shape == (2, 4, 4, 16)


def test_bottleneck_parameter_names_and_shapes():
  spec = _specs(in_channels=8, width=16, stride=2)[0]
  params, _ = _run_block(nf.NFBottleneckBlock, spec, jnp.zeros((1, 8, 8, 8)))
  shapes = {k: {n: v.shape for n, v in p.items()} for k, p in params.items()}
  name = spec.name
  assert shapes[name] == {"skip_gain": ()}
  assert shapes[f"{name}/conv0"]["w"] == (1, 1, 8, 4)
  assert shapes[f"{name}/conv1"]["w"] == (3, 3, 4, 4)
  assert shapes[f"{name}/conv2"]["w"] == (1, 1, 4, 16)
  assert shapes[f"{name}/conv_shortcut"]["w"] == (1, 1, 8, 16)


def test_skip_gain_scales_residual_by_alpha():
  spec = _specs()[1]
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 16))
  _, out1 = _run_block(nf.NFBasicBlock, spec, x, skip_gain_init=1.0)
  _, out2 = _run_block(nf.NFBasicBlock, spec, x, skip_gain_init=2.0)
  np.testing.assert_allclose(out2 - x, 2.0 * (out1 - x), rtol=1e-5, atol=1e-6)


def test_stochastic_depth_drops_whole_examples_with_given_rate():
  x = jnp.ones((20_000, 2, 2, 3))
  f = hk.transform(lambda v: nf.stochastic_depth(v, 0.3, is_training=True))
  out = np.asarray(f.apply({}, jax.random.key(0), x))
  per_example = out.reshape(len(out), -1)
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # Whole examples.
  keep = per_example[:, 0].mean()
  assert keep == pytest.approx(0.7, abs=0.01)  # 10 sigma is 0.032.
  scaled = hk.transform(lambda v: nf.stochastic_depth(v, 0.3, True, rescale=True))
  values = np.unique(np.asarray(scaled.apply({}, jax.random.key(0), x)))
  np.testing.assert_allclose(values, [0.0, 1.0 / 0.7], rtol=1e-6)


def test_stochastic_depth_is_identity_at_evaluation():
  x = jax.random.normal(jax.random.key(5), (4, 3))
  f = hk.transform(lambda v: nf.stochastic_depth(v, 0.5, is_training=False))
  np.testing.assert_array_equal(f.apply({}, None, x), x)


def test_block_stochastic_depth_uses_spec_rate():
  spec = block_specs([4], [8], [1], 8, stochdepth_rate=0.5)[3]
  assert spec.stochdepth_rate == pytest.approx(0.375)
  x = jax.random.normal(jax.random.key(6), (4000, 4, 4, 8))
  _, out = _run_block(nf.NFBasicBlock, spec, x, is_training=True, skip_gain_init=1.0)
  dropped = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
  assert dropped.mean() == pytest.approx(0.375, abs=0.03)


def test_squeeze_excite_gate_range_and_hidden_width():
  x = jax.random.normal(jax.random.key(7), (2, 4, 4, 16))
  f = hk.transform(lambda v: nf.SqueezeExcite(16, 4, name="se")(v))
  params = f.init(jax.random.key(0), x)
  out = f.apply(params, None, x)
  assert params["se/linear0"]["w"].shape == (16, 4)
  gate = np.asarray(out / x)
  assert np.all(gate > 0) and np.all(gate < 2)
