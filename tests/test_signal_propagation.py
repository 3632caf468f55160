"""Signal propagation (paper Section 3, Figures 1 and 2): per-block statistics at init.

The expensive fixtures (ResNet-50 layouts at 224 px, the depth-288 He-init
network) are module-scoped and compiled once each. Full width keeps the
statistics stable: at width 0.25 or 0.5 the channel averages of a single random
network wander by up to 7% from the analytic curve depending on the seed.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet
from nfresnet.mean_field import mean_field_signal_variance
from nfresnet.signal_propagation import channel_statistics, draw_params, expected_signal_variance

RELU_VAR = 0.340845  # Var[relu(z)], z ~ N(0, 1) = (1 - 1/pi) / 2 (paper Section 4).
INV_PI = 1.0 / np.pi  # E[relu(z)]^2 * 2: squared-mean growth per BN-ReLU-Conv block.


def gaussian(batch: int, size: int, seed: int = 7) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def measure(model_fn, x, seed: int = 0, **kwargs):
  return nfresnet.signal_propagation(model_fn, x, rng=jax.random.key(seed), **kwargs)


def first_three_stages(result) -> np.ndarray:
  return result["stage"] < 3


@pytest.fixture(scope="module")
def nf50():
  """NF-ResNet-50 layout, Scaled WS, skip gain 1, 224 px, batch 2."""
  model_fn = lambda x: nfresnet.NFResNet(10, 50, skip_gain_init=1.0)(x, False)
  return measure(model_fn, gaussian(2, 224))


def nf_he(depth: int, stem: str):
  """The paper's "NF, He init" network: He-init convs, plain ReLU, skip gain 1."""
  return lambda x: nfresnet.NFResNet(
    10, depth, skip_gain_init=1.0, weight_standardization=False, stem=stem
  )(x, False)


@pytest.fixture(scope="module")
def he288():
  """NF He init, depth 288, 224 px, batch 2, with the figure-2 stem (no max pool)."""
  return measure(nf_he(288, "imagenet_no_pool"), gaussian(2, 224))


@pytest.fixture(scope="module")
def silu288():
  """NF-ResNet-288 with Scaled WS and SiLU, skip gain 1, the figure-2 stem, 224 px, batch 2."""
  model_fn = lambda x: nfresnet.NFResNet(
    10, 288, skip_gain_init=1.0, activation="silu", stem="imagenet_no_pool"
  )(x, False)
  return measure(model_fn, gaussian(2, 224))


@pytest.fixture(scope="module", params=["bn_relu", "relu_bn"])
def bn50(request):
  """ResNet-V2-50 with BatchNorm in training mode (batch statistics), 224 px, batch 4."""
  model_fn = lambda x: nfresnet.ResNetV2(10, 50, order=request.param, conv_init="he")(x, True)
  return request.param, measure(model_fn, gaussian(4, 224))


# Small (8 blocks, 32 px) but with the ResNet-50 channel widths: their kernel
# shapes are those of the fixtures above, so no new random-number kernels compile.
def tiny_nf(x):
  return nfresnet.NFResNet(10, 26, skip_gain_init=1.0)(x, False)


def tiny_bn(x):
  return nfresnet.ResNetV2(10, 26, order="relu_bn", conv_init="he")(x, True)


def test_expected_signal_variance_resnet50():
  # beta^2 of every block of NF-ResNet-50, alpha 0.2 (paper Section 4).
  beta_sq = [1.00, 1.04, 1.08, 1.12, 1.04, 1.08, 1.12, 1.16, 1.04, 1.08, 1.12, 1.16, 1.20, 1.24]
  beta_sq += [1.04, 1.08]
  curve = expected_signal_variance(50, alpha=0.2)
  # A block's output variance is the next block's beta^2.
  np.testing.assert_allclose(curve[:-1], beta_sq[1:], rtol=1e-12)
  k = np.concatenate([np.arange(1, n + 1) for n in (3, 4, 6, 3)])
  np.testing.assert_allclose(curve, 1 + k * 0.2**2, rtol=1e-12)
  np.testing.assert_array_equal(curve, expected_signal_variance((3, 4, 6, 3), 0.2))
  with pytest.raises(ValueError, match="unknown depth 49"):
    expected_signal_variance(49)


def test_channel_statistics_match_numpy():
  x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)) * np.arange(1, 7) + np.arange(6)
  sq_mean, var = channel_statistics(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(sq_mean, np.mean(x.mean(axis=(0, 1, 2)) ** 2), rtol=1e-5)
  np.testing.assert_allclose(var, np.mean(x.var(axis=(0, 1, 2))), rtol=1e-5)


def test_nf_scaled_ws_follows_analytic_curve(nf50):
  stages = first_three_stages(nf50)
  np.testing.assert_array_equal(nf50["stage_ends"], [2, 6, 12, 15])
  np.testing.assert_array_equal(nf50["expected_var"], expected_signal_variance(50))
  assert nf50["avg_var"].shape == nf50["avg_sq_mean"].shape == nf50["residual_var"].shape == (16,)
  relative = np.abs(nf50["avg_var"] / nf50["expected_var"] - 1.0)
  assert relative[stages].max() < 0.05, relative
  assert nf50["avg_sq_mean"][1:].max() < 0.02, nf50["avg_sq_mean"]
  # Zero padding of the 7x7 stage-4 maps lowers its 3x3-conv variances (docs/signal_propagation.md).
  residual = nf50["residual_var"][stages]
  assert 0.85 <= residual.min() and residual.max() <= 1.1, residual
  assert np.isfinite([nf50["stem_avg_sq_mean"], nf50["stem_avg_var"]]).all()


def test_nf_he_init_mean_shift(he288):
  sq_mean, var = he288["avg_sq_mean"], he288["avg_var"]
  starts = np.concatenate([[0], he288["stage_ends"][:-1] + 1])
  for start, end in zip(starts, he288["stage_ends"], strict=True):
    assert sq_mean[end] > 1.3 * sq_mean[start], (start, end, sq_mean[start], sq_mean[end])
  # Below the variance after the first block, above it at the end of the network.
  assert sq_mean[0] < var[0] and sq_mean[-1] > 2 * var[-1], (sq_mean, var)
  assert sq_mean[-1] > 3 * sq_mean[0], sq_mean


def test_nf_he_init_residual_variance_below_0_6(he288):
  # He init keeps the second moment on the beta bookkeeping, but ever more of it
  # is channel mean, so the residual-branch variance falls well below 1.
  assert he288["residual_var"].max() < 0.6, he288["residual_var"]
  assert np.median(he288["residual_var"]) < 0.35, he288["residual_var"]
  # Second moment / beta^2: 0.99-1.05 in stage 1, lowered by zero padding later.
  second_moment = (he288["avg_sq_mean"] + he288["avg_var"]) / he288["expected_var"]
  stage_1 = he288["stage"] == 0
  np.testing.assert_allclose(second_moment[stage_1], 1.0, atol=0.1)
  assert 0.65 < second_moment.min() and second_moment.max() < 1.1, second_moment


def test_max_pool_stem_puts_a_mean_shift_into_block_one():
  """Why figure 2 drops the max pool: without WS its positive means reach the blocks."""
  result = measure(nf_he(26, "imagenet"), gaussian(2, 224))
  assert result["stem_avg_sq_mean"] > 4 * result["stem_avg_var"], result
  second_moment = result["avg_sq_mean"][0] + result["avg_var"][0]
  assert second_moment > 3 * result["expected_var"][0], second_moment
  assert result["residual_var"][0] > 0.6, result["residual_var"]


def test_silu_variance_follows_mean_field_not_analytic_curve(silu288):
  predicted = mean_field_signal_variance(288, "silu")
  first_two = silu288["stage"] < 2  # 56x56 and 28x28 maps: little zero padding.
  np.testing.assert_allclose(
    silu288["avg_var"][first_two], predicted["avg_var"][first_two], rtol=0.05
  )
  np.testing.assert_allclose(
    silu288["residual_var"][first_two], predicted["residual_var"][first_two], rtol=0.08
  )
  # SiLU is not homogeneous: the excess over 1 + k alpha^2 compounds across stages.
  assert silu288["avg_var"][-1] > 1.2 * silu288["expected_var"][-1], silu288["avg_var"]
  assert silu288["avg_sq_mean"].max() < 0.05, silu288["avg_sq_mean"]


def test_mean_field_is_the_analytic_curve_for_relu():
  for depth in (18, 50, 288):
    predicted = mean_field_signal_variance(depth, "relu")
    np.testing.assert_allclose(predicted["avg_var"], expected_signal_variance(depth), rtol=1e-9)
    np.testing.assert_allclose(predicted["residual_var"], 1.0, rtol=1e-9)
  silu = mean_field_signal_variance(50, "silu")["residual_var"]
  assert silu[0] == pytest.approx(1.0, abs=1e-6) and silu[-1] > 1.01, silu


def test_batchnorm_orders(bn50):
  order, result = bn50
  within_stage = np.diff(result["stage"]) == 0
  if order == "relu_bn":
    assert result["avg_sq_mean"].max() < 0.01, result["avg_sq_mean"]
    # He-init convs: each branch adds variance 2 (paper Figure 1), reset at transitions.
    np.testing.assert_allclose(result["residual_var"], 2.0, rtol=0.05)
    np.testing.assert_allclose(np.diff(result["avg_var"])[within_stage], 2.0, rtol=0.05)
  else:
    np.testing.assert_allclose(result["residual_var"], 2 * RELU_VAR, rtol=0.05)
    growth = np.diff(result["avg_sq_mean"])[within_stage]
    assert (growth > 0).all(), growth
    assert abs(growth.mean() / INV_PI - 1.0) < 0.1, growth


@pytest.fixture(scope="module")
def tiny_inputs() -> jax.Array:
  return gaussian(8, 32)


@pytest.fixture(scope="module")
def tiny_results(tiny_inputs):
  """Both tiny models measured at init on 1 and on 8 devices."""
  return {
    (model_fn.__name__, count): measure(model_fn, tiny_inputs, devices=jax.devices()[:count])
    for model_fn in (tiny_nf, tiny_bn)
    for count in (1, 8)
  }


@pytest.mark.parametrize("name", ["tiny_nf", "tiny_bn"])
def test_one_and_eight_devices_agree(tiny_results, name):
  assert len(jax.devices()) == 8
  one, eight = tiny_results[name, 1], tiny_results[name, 8]
  for key in ("avg_sq_mean", "avg_var", "residual_var", "stem_avg_sq_mean", "stem_avg_var"):
    # atol: exact zeros (ReLU-BN-Conv squared means) come out as float32 round-off.
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-9, err_msg=key)


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="not divisible by 8 devices"):
    measure(tiny_nf, gaussian(4, 32), devices=jax.devices())


def small_mlp_bn(x):
  """Parameters from two initializer kinds, plus BatchNorm state."""
  h = hk.Linear(16, w_init=hk.initializers.VarianceScaling(2.0, "fan_in", "normal"))(x)
  h = hk.BatchNorm(True, True, 0.9)(h, is_training=True)
  return hk.Linear(16)(jax.nn.relu(h))


def test_draw_params_equals_haiku_init():
  x = gaussian(2, 4)
  expected, _ = hk.transform_with_state(small_mlp_bn).init(jax.random.key(0), x)
  drawn = draw_params(small_mlp_bn, jax.random.key(0), x)
  assert jax.tree.structure(drawn) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)


def test_given_params_and_state(tiny_inputs, tiny_results):
  """The init parameters passed in as trained ones give the at-init numbers.

  The moving averages are zeros: BatchNorm in training mode does not read them.
  """
  params = draw_params(tiny_bn, jax.random.key(0), tiny_inputs)
  _, state_shapes = jax.eval_shape(
    hk.transform_with_state(tiny_bn).init, jax.random.key(0), tiny_inputs
  )
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state_shapes)
  given = measure(tiny_bn, tiny_inputs, params=params, state=state)
  for key in ("avg_sq_mean", "avg_var", "residual_var"):
    np.testing.assert_allclose(given[key], tiny_results["tiny_bn", 1][key], rtol=1e-5, atol=1e-9)


def test_perturbed_params_zero_skip_gains(tiny_inputs, tiny_results):
  """Skip gains 0: non-transition blocks pass their input through unchanged."""
  params = draw_params(tiny_nf, jax.random.key(0), tiny_inputs)
  zeroed = {
    module: {k: (jnp.zeros_like(v) if k == "skip_gain" else v) for k, v in values.items()}
    for module, values in params.items()
  }
  result = measure(tiny_nf, tiny_inputs, params=zeroed)
  at_init = tiny_results["tiny_nf", 1]
  within_stage = np.diff(result["stage"]) == 0
  np.testing.assert_allclose(np.diff(result["avg_var"])[within_stage], 0.0, atol=1e-6)
  # The first block's branch input does not depend on any skip gain.
  np.testing.assert_allclose(result["residual_var"][0], at_init["residual_var"][0], rtol=1e-6)
  assert not np.allclose(result["avg_var"], at_init["avg_var"])


def test_model_without_residual_blocks_is_rejected():
  with pytest.raises(ValueError, match="no nfresnet.ResidualBlock"):
    measure(lambda x: hk.Linear(3)(x), gaussian(2, 4))
