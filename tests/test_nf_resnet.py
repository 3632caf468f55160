"""NF-ResNet: shapes, parameter counts and names, dtypes, signal propagation at init."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf
from nfresnet.layout import RESNET_DEPTHS
from nfresnet.nf_resnet import resnet_stem


def _param_shapes(model_fn, shape):
  f = hk.transform(model_fn)
  return jax.eval_shape(f.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("stem,resolution", [("imagenet", 64), ("cifar", 16)])
@pytest.mark.parametrize("depth", sorted(RESNET_DEPTHS))
def test_output_shape_every_depth_and_stem(depth, stem, resolution):
  f = hk.transform(lambda x: nf.NFResNet(7, depth, width=0.125, stem=stem)(x, is_training=True))
  x = jax.ShapeDtypeStruct((2, resolution, resolution, 3), jnp.float32)
  params = jax.eval_shape(f.init, jax.random.key(0), x)
  out = jax.eval_shape(f.apply, params, jax.random.key(1), x)
  assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_no_pool_stem_matches_imagenet_map_size():
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  for stem in ("imagenet", "imagenet_no_pool"):
    f = hk.transform(lambda x, stem=stem: resnet_stem(x, stem, 8, nf.WSConv2D))
    out = jax.eval_shape(f.apply, jax.eval_shape(f.init, jax.random.key(0), x), None, x)
    assert out.shape == (2, 16, 16, 8), stem


def test_he_init_network_stem_has_unit_gain():
  # He et al.'s first-layer rule: no ReLU precedes the stem, so Var(w) = 1 / fan-in.
  f = hk.transform(lambda x: nf.NFResNet(10, 26, weight_standardization=False)(x, False))
  params = f.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  stem = params["nf_resnet/stem"]["w"]
  assert float(jnp.std(stem)) * np.sqrt(7 * 7 * 3) == pytest.approx(1.0, rel=0.03)
  conv = params["nf_resnet/stage1_block1/conv0"]["w"]
  assert float(jnp.std(conv)) * np.sqrt(64) == pytest.approx(np.sqrt(2.0), rel=0.03)


def test_nf_resnet50_parameter_count_matches_reference():
  params = _param_shapes(lambda x: nf.NFResNet(1000)(x, is_training=False), (1, 224, 224, 3))
  assert nf.count_params(params) == 25_557_048


def test_nf_resnet_counts_equal_bn_resnet_v1_plus_skip_gains():
  # Each WS conv's gain and bias replace a BN's scale and offset; one skip gain per block.
  for depth, blocks in [(50, 16), (101, 33)]:
    nf_params = _param_shapes(lambda x: nf.NFResNet(1000, depth)(x, False), (1, 224, 224, 3))
    v1 = hk.transform_with_state(
      lambda x: getattr(hk.nets, f"ResNet{depth}")(1000)(x, is_training=True)  # noqa: B023
    )
    v1_params, _ = jax.eval_shape(v1.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert nf.count_params(nf_params) == nf.count_params(v1_params) + blocks
  assert nf.count_params(nf_params) == 44_549_193


def test_stable_parameter_names():
  params = _param_shapes(lambda x: nf.NFResNet(10, 26, width=0.125)(x, False), (1, 32, 32, 3))
  assert "nf_resnet/stem" in params and "nf_resnet/classifier" in params
  assert set(params["nf_resnet/stage2_block1/conv_shortcut"]) == {"w", "gain", "bias"}
  assert set(params["nf_resnet/stage4_block2"]) == {"skip_gain"}
  assert "nf_resnet/stage4_block3" not in params


def test_he_init_variant_has_plain_convs_and_unscaled_relu():
  make = lambda: nf.NFResNet(10, 18, width=0.125, weight_standardization=False)  # noqa: E731
  params = _param_shapes(lambda x: make()(x, False), (1, 32, 32, 3))
  assert set(params["nf_resnet/stage1_block1/conv0"]) == {"w", "bias"}
  module = hk.transform(lambda: make().activation)
  assert module.apply({}, None)(jnp.array(1.0)) == 1.0


def test_reference_gammas_are_selectable():
  act = hk.transform(lambda: nf.NFResNet(10, 18, reference_gammas=True).activation)
  assert float(act.apply({}, None)(jnp.array(1.0))) == pytest.approx(1.7139588594436646)


def test_bf16_inputs_keep_float32_parameters():
  f = hk.transform(lambda x: nf.NFResNet(5, 18, width=0.125, stem="cifar")(x, True))
  x = jnp.ones((2, 16, 16, 3), jnp.bfloat16)
  params = f.init(jax.random.key(0), x)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  assert jax.jit(f.apply)(params, jax.random.key(1), x).dtype == jnp.float32


def test_classifier_init_and_dropout_only_in_training():
  f = hk.transform(
    lambda x, t: nf.NFResNet(5, 18, width=0.125, stem="cifar", dropout_rate=0.5)(x, t)
  )
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  params = f.init(jax.random.key(0), x, True)
  assert float(jnp.std(params["nf_resnet/classifier"]["w"])) == pytest.approx(0.01, rel=0.2)
  eval_a = f.apply(params, jax.random.key(1), x, False)
  eval_b = f.apply(params, jax.random.key(2), x, False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = f.apply(params, jax.random.key(1), x, True)
  train_b = f.apply(params, jax.random.key(2), x, True)
  assert not np.allclose(train_a, train_b)


def test_invalid_arguments_raise_listing_allowed():
  with pytest.raises(ValueError, match="unknown stem 'tiny'; allowed: imagenet, imagenet_no_pool"):
    hk.transform(lambda: nf.NFResNet(10, stem="tiny")).init(None)
  with pytest.raises(ValueError, match="unknown activation"):
    hk.transform(lambda: nf.NFResNet(10, activation="rellu")).init(None)


def _block_output_stats(model_fn, x):
  """Per-block (squared channel mean, channel variance) at every block output."""

  def fn(v):
    stats = []

    def interceptor(method, args, kwargs, context):
      out = method(*args, **kwargs)
      if isinstance(context.module, nf.ResidualBlock) and context.method_name == "__call__":
        stats.append((jnp.mean(jnp.mean(out, (0, 1, 2)) ** 2), jnp.mean(jnp.var(out, (0, 1, 2)))))
      return out

    with hk.intercept_methods(interceptor):
      model_fn(v)
    return jnp.asarray(stats)

  f = hk.transform(fn)
  return np.asarray(jax.jit(f.apply)(f.init(jax.random.key(0), x), None, x))


def test_scaled_ws_network_preserves_signal_at_init():
  # Paper Section 4 and Figure 2: with skip gain 1, block k of a stage has output variance
  # 1 + k * alpha^2 and squared channel mean near 0, at 224 px as in the paper.
  # Width 0.5 keeps enough channels (at width 0.25 inter-channel correlation lowers
  # late-stage variances by up to 8%); smaller images put stage 4 at 4x4, where zero
  # padding lowers its variance by 7%.
  model = lambda x: nf.NFResNet(10, 26, width=0.5, skip_gain_init=1.0)(x, False)  # noqa: E731
  x = jax.random.normal(jax.random.key(1), (4, 224, 224, 3))
  stats = _block_output_stats(model, x)
  _, expected = nf.expected_variances([2, 2, 2, 2], alpha=0.2)
  np.testing.assert_allclose(stats[:, 1], expected, rtol=0.05)
  assert np.all(stats[:, 0] < 0.02)
