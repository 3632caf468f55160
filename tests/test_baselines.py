"""Baselines (paper Figure 1, Table 1): BN ResNetV2 in both orders, SkipInit, Fixup."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import nfresnet as nf
from experiments.train_state import INIT_COMPILER_OPTIONS


def _shapes(model_fn, shape=(1, 224, 224, 3)):
  f = hk.transform_with_state(model_fn)
  return jax.eval_shape(f.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("order", ["bn_relu", "relu_bn"])
def test_resnet_v2_50_mirrors_haiku_v2_parameter_count(order):
  params, state = _shapes(lambda x: nf.ResNetV2(1000, 50, order=order)(x, True))
  reference, _ = _shapes(lambda x: hk.nets.ResNet50(1000, resnet_v2=True)(x, is_training=True))
  assert nf.count_params(params) == nf.count_params(reference) == 25_549_352
  # Moving mean and variance of every BN (including the final one).
  assert nf.count_params(state) > 0


def test_resnet_v2_18_mirrors_haiku_v2():
  params, _ = _shapes(lambda x: nf.ResNetV2(1000, 18)(x, True))
  reference, _ = _shapes(lambda x: hk.nets.ResNet18(1000, resnet_v2=True)(x, is_training=True))
  assert nf.count_params(params) == nf.count_params(reference) == 11_687_720


@pytest.mark.parametrize(
  "cls", [nf.ResNetV2, nf.SkipInitResNet, nf.FixupResNet], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("stem,resolution", [("imagenet", 32), ("cifar", 16)])
def test_baseline_output_shapes(cls, stem, resolution):
  shape = (2, resolution, resolution, 3)
  f = hk.transform_with_state(lambda x: cls(6, 26, width=0.125, stem=stem)(x, True))
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  params, state = jax.eval_shape(f.init, jax.random.key(0), spec)
  out, _ = jax.eval_shape(f.apply, params, state, jax.random.key(1), jnp.zeros(shape))
  assert out.shape == (2, 6)


def test_bn_model_initializes_in_eval_mode_and_uses_moving_stats():
  f = hk.transform_with_state(lambda x, t: nf.ResNetV2(4, 18, width=0.125, stem="cifar")(x, t))
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  params, state = f.init(jax.random.key(0), x, False)
  out_eval, same_state = f.apply(params, state, None, x, False)
  _, new_state = f.apply(params, state, None, x, True)

  def all_equal(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))

  assert all_equal(state, same_state)
  assert not all_equal(state, new_state)
  assert out_eval.shape == (4, 4)


def test_skipinit_blocks_are_identity_at_init():
  f = hk.transform(lambda x: nf.SkipInitResNet(3, 18, width=0.125, stem="cifar")(x, True))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  params = f.init(jax.random.key(0), x)
  assert set(params["skipinit_resnet/stage1_block1/conv0"]) == {"w", "bias"}
  assert not any("gain" in p for p in params.values())  # No WS gains; only skip gains.
  inputs, outputs = [], []

  def record(method, args, kwargs, context):
    out = method(*args, **kwargs)
    if isinstance(context.module, nf.ResidualBlock) and context.method_name == "__call__":
      inputs.append(args[0])
      outputs.append(out)
    return out

  def fn(v):
    with hk.intercept_methods(record):
      return nf.SkipInitResNet(3, 18, width=0.125, stem="cifar")(v, True)

  hk.transform(fn).apply(params, jax.random.key(1), x)
  np.testing.assert_array_equal(outputs[1], inputs[1])  # stage1_block2, no projection


def test_fixup_init():
  params = _init(lambda x: nf.FixupResNet(3, 50, width=0.25)(x, True))
  for conv in ("conv0", "conv1"):  # He-normal over the fan-out, times L^(-1/4), L = 16 blocks.
    w = params[f"fixup_resnet/stage3_block2/{conv}"]["w"]
    fan_out = np.prod(w.shape[:2]) * w.shape[3]
    assert float(jnp.std(w)) == pytest.approx(np.sqrt(2 / fan_out) * 16**-0.25, rel=0.05)
  shortcut = params["fixup_resnet/stage3_block1/conv_shortcut"]["w"]
  assert float(jnp.std(shortcut)) == pytest.approx(np.sqrt(2 / shortcut.shape[3]), rel=0.05)
  stem = params["fixup_resnet/stem"]["w"]  # Haiku's default: truncated, std 0.88 / sqrt(fan_in).
  assert float(jnp.std(stem)) == pytest.approx(0.8796 / np.sqrt(7 * 7 * 3), rel=0.08)
  assert float(jnp.max(jnp.abs(stem))) <= 2 / np.sqrt(7 * 7 * 3)
  np.testing.assert_array_equal(params["fixup_resnet/stage3_block2/conv2"]["w"], 0.0)
  np.testing.assert_array_equal(params["fixup_resnet/classifier"]["w"], 0.0)
  assert params["fixup_resnet/stage3_block2"]["scale"] == 1.0


def _conv(x, w, stride=1):
  return jax.lax.conv_general_dilated(
    x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize("projection", [False, True])
def test_fixup_block_is_the_reference_formula(projection):
  """By hand: out = x + b1a feeds branch and shortcut; relu(sc + scale * f(out) + b3b)."""
  channels_in, channels = (8, 16) if projection else (16, 16)
  spec = nf.layout.BlockSpec(
    "block", 0, 1, channels_in, channels, 2 if projection else 1, projection, projection,
    1.0, 1.0, 0.0,
  )  # fmt: skip
  block = hk.transform(
    lambda x: nf.baselines.FixupBlock(spec, block_type="bottleneck", num_blocks=4)(x, False)
  )
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, channels_in))
  params = block.init(jax.random.key(1), x)
  keys = iter(jax.random.split(jax.random.key(2), 32))
  params = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), params)  # No zeros.
  b = params["block"]
  w = {name.split("/")[-1]: v["w"] for name, v in params.items() if "w" in v}
  out = x + b["bias0a"]
  shortcut = _conv(out, w["conv_shortcut"], 2) if projection else out
  h = jax.nn.relu(_conv(out, w["conv0"]) + b["bias0b"])
  h = jax.nn.relu(_conv(h + b["bias1a"], w["conv1"], spec.stride) + b["bias1b"])
  h = _conv(h + b["bias2a"], w["conv2"]) * b["scale"] + b["bias_out"]
  expected = jax.nn.relu(h + shortcut)
  np.testing.assert_allclose(block.apply(params, None, x), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
  "cls, count",
  [(nf.SkipInitResNet, 25_530_424), (nf.FixupResNet, 25_504_026)],
  ids=["skipinit", "fixup"],
)
def test_baseline_50_parameter_counts_equal_the_reference(cls, count):
  params, _ = _shapes(lambda x: cls(1000, 50)(x, True))
  assert nf.count_params(params) == count


def _init(model_fn, state=False, jit=True):
  """Parameters of ``model_fn`` on 32 px input (jitted: one compile instead of many ops)."""
  f = (hk.transform_with_state if state else hk.transform)(model_fn)
  init = lambda: f.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # noqa: E731
  out = jax.jit(init).lower().compile(INIT_COMPILER_OPTIONS)() if jit else init()
  return out[0] if state else out


def test_skipinit_and_bn_use_the_reference_initializers():
  params = _init(lambda x: nf.SkipInitResNet(10, 18, width=0.125)(x, True))
  assert set(params["skipinit_resnet/stem"]) == {"w"}  # No stem bias.
  np.testing.assert_array_equal(params["skipinit_resnet/classifier"]["w"], 0.0)
  w = params["skipinit_resnet/stage3_block2/conv1"]["w"]
  fan_in = np.prod(w.shape[:-1])
  assert float(jnp.std(w)) == pytest.approx(0.8796 / np.sqrt(fan_in), rel=0.05)
  he = _init(lambda x: nf.SkipInitResNet(10, 18, width=0.125, conv_init="he")(x, True))
  w_he = he["skipinit_resnet/stage3_block2/conv1"]["w"]
  assert float(jnp.std(w_he)) == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
  bn_params = _init(lambda x: nf.ResNetV2(10, 18, width=0.125)(x, True), state=True)
  w_bn = bn_params["resnet_v2/stage3_block2/conv1"]["w"]
  assert float(jnp.std(w_bn)) == pytest.approx(0.8796 / np.sqrt(fan_in), rel=0.05)
  with pytest.raises(ValueError, match="conv_init"):
    hk.transform(lambda x: nf.SkipInitResNet(10, 18, conv_init="xavier")(x, True)).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )


def test_cross_replica_batchnorm_matches_global_batch():
  model = functools.partial(nf.ResNetV2, 4, 18, width=0.125, stem="cifar")
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3)) + 0.5
  single = hk.transform_with_state(lambda v: model()(v, True))
  params, state = single.init(jax.random.key(0), x)
  # The classifier starts at zero; random weights make the logits depend on the features.
  classifier = params["resnet_v2/classifier"]
  classifier = {**classifier, "w": jax.random.normal(jax.random.key(1), classifier["w"].shape)}
  params = {**params, "resnet_v2/classifier": classifier}
  expected, _ = single.apply(params, state, None, x)
  assert float(jnp.std(expected)) > 0.1

  def sharded_logits(cross_replica_axis):
    f = hk.transform_with_state(lambda v: model(cross_replica_axis=cross_replica_axis)(v, True))
    mesh = jax.make_mesh((8,), ("data",))
    per_device = lambda p, s, v: f.apply(p, s, None, v)[0]  # noqa: E731
    mapped = jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P("data")
    )
    sharded_x = jax.device_put(x, jax.NamedSharding(mesh, P("data")))
    replicated = jax.device_put((params, state), jax.NamedSharding(mesh, P()))
    return jax.jit(mapped)(*replicated, sharded_x)

  np.testing.assert_allclose(sharded_logits("data"), expected, rtol=1e-4, atol=1e-5)
  # Per-device statistics over one example each differ from global ones.
  assert not np.allclose(sharded_logits(None), expected, atol=1e-3)
