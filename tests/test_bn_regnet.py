"""Tests for nfresnet.bn_regnet: layer list and counts, zero-init branches, BatchNorm modes.

Counts are abstract (``jax.eval_shape``). The computing tests share one jitted
initialization of a tiny B0 (width 1/16, 32 px, batch 4) and two compiled applies
(training and evaluation mode), compiled at XLA's lowest backend optimization level
with the ``unsafe_rbg`` PRNG, as in ``tests/test_nf_regnet.py``.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models
from experiments.configs import ConfigError, imagenet
from experiments.configs.cifar10 import get_config as cifar10_config
from nfresnet import NF_REGNET_VARIANTS, BNRegNet, BNRegNetBlock, NFRegNet, count_params

FAST_COMPILE = {"xla_backend_optimization_level": 0}
NUM_CLASSES = 10
B0_PARAMS = 8_595_356  # Width 0.75, 1000 classes: equal to hand_count("B0") below.


def hand_count(variant: str, width: float = 0.75, num_classes: int = 1000) -> int:
  """Parameters of the BN-RegNet layer list, counted layer by layer.

  Every conv is bias-free and followed by a BatchNorm with a scale and an offset
  per channel. The first block expands by 1, the others by 2.25, rounded down to
  groups of 8; SE hidden width is half the expanded width, both SE layers have
  biases; the first block of every stage has a 1x1 conv + BN shortcut.
  """
  row = NF_REGNET_VARIANTS[variant]

  def conv_bn(k, cin, cout, groups=1):
    return k * k * cin // groups * cout + 2 * cout

  ch = int(row.widths[0] * width)
  params = conv_bn(3, 3, ch)  # Stem.
  first = True
  for base, depth in zip(row.widths, row.depths, strict=True):
    out = int(base * width)
    for block in range(depth):
      mid = int(ch * (1 if first else 2.25)) // 8 * 8
      hidden = mid // 2
      params += conv_bn(1, ch, mid) + conv_bn(3, mid, mid, mid // 8) + conv_bn(1, mid, out)
      params += mid * hidden + hidden + hidden * mid + mid  # Squeeze-excite.
      params += conv_bn(1, ch, out) if block == 0 else 0  # Transition shortcut.
      ch, first = out, False
  head = 1280 * ch // 440
  return params + conv_bn(1, ch, head) + head * num_classes + num_classes


def abstract_count(cls, variant: str = "B0") -> int:
  fn = hk.transform_with_state(lambda x: cls(1000, variant)(x, is_training=True))
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return count_params(jax.eval_shape(fn.init, jax.random.key(0), x)[0])


def test_b0_parameter_count_is_the_layer_list_and_nf_regnet_minus_skip_gains():
  bn, nf = abstract_count(BNRegNet), abstract_count(NFRegNet)
  assert bn == hand_count("B0") == B0_PARAMS
  # A BN (scale, offset) per conv replaces each WS conv's (gain, bias): same count.
  # What remains is NFRegNet's scalar skip gain, one per block.
  assert nf - bn == sum(NF_REGNET_VARIANTS["B0"].depths) == 16
  assert nf == 8_595_372


def forward(x, is_training):
  """Logits, and every block's (input, residual branch output, output)."""
  blocks = {}

  def record(method, args, kwargs, context):
    out = method(*args, **kwargs)
    if isinstance(context.module, BNRegNetBlock):
      entry = blocks.setdefault(context.module.spec.name, {})
      if context.method_name == "__call__":
        entry.update(x=args[0], out=out)
      elif context.method_name == "residual_output":
        entry["residual"] = out
    return out

  with hk.intercept_methods(record):
    logits = BNRegNet(NUM_CLASSES, "B0", width=0.0625)(x, is_training)
  return logits, blocks


MODEL = hk.transform_with_state(forward)


def rbg_key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="unsafe_rbg")


def images(seed: int) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (4, 32, 32, 3))


@pytest.fixture(scope="module")
def init():
  """``(params, state)`` of the tiny B0, initialized in training mode."""
  fn = jax.jit(MODEL.init, static_argnums=2, compiler_options=FAST_COMPILE)
  return fn(rbg_key(0), images(1), True)


@pytest.fixture(scope="module")
def apply():
  return jax.jit(MODEL.apply, static_argnums=4, compiler_options=FAST_COMPILE)


def test_layer_names_and_batchnorm_state(init):
  params, state = init
  assert params["bn_regnet/stem"]["w"].shape == (3, 3, 3, 3)  # int(48 / 16) channels.
  assert "bias" not in params["bn_regnet/stem"]
  assert "bn_regnet/stage1_block1/conv_shortcut_bn" in params
  assert "bn_regnet/stage2_block2/conv_shortcut" not in params
  bns = sorted(k for k, v in params.items() if "scale" in v)
  # Stem, 3 per block, 4 transition shortcuts, head.
  assert len(bns) == 1 + 3 * 16 + 4 + 1
  assert set(state) == {f"{bn}/~/{ema}" for bn in bns for ema in ("mean_ema", "var_ema")}
  for bn in bns:
    scale = params[bn]["scale"]
    expected = 0.0 if bn.endswith("/conv2_bn") else 1.0  # Zero-init last BN of each branch.
    np.testing.assert_array_equal(scale, np.full_like(scale, expected))
  kernel = params["bn_regnet/final_conv"]["w"]  # 1x1, 27 -> 78 channels: 2,106 weights.
  assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2 / 27), rel=0.1)  # He-normal.
  np.testing.assert_array_equal(params["bn_regnet/classifier"]["w"], 0.0)


def test_output_shape_zero_logits_and_blocks_are_shortcuts_at_init(init, apply):
  params, state = init
  (logits, blocks), _ = apply(params, state, rbg_key(1), images(2), True)
  assert logits.shape == (4, NUM_CLASSES) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.0)  # Zero-initialized classifier.
  assert len(blocks) == 16
  for name, block in blocks.items():
    np.testing.assert_array_equal(block["residual"], 0.0, err_msg=name)
    if name.endswith("block1"):  # Transition: 2x2 average pool, 1x1 conv, BN.
      assert block["out"].shape[1] == block["x"].shape[1] // 2
      assert float(jnp.abs(block["out"]).max()) > 0.1
    else:  # Identity shortcut: the block is the identity.
      np.testing.assert_array_equal(block["out"], block["x"], err_msg=name)


def with_random_classifier(params):
  """Parameters whose logits depend on the features (the classifier is zero at init)."""
  params = dict(params)
  w = params["bn_regnet/classifier"]["w"]
  params["bn_regnet/classifier"] = {
    "w": jax.random.normal(jax.random.key(3), w.shape),
    "b": params["bn_regnet/classifier"]["b"],
  }
  return params


def test_evaluation_uses_moving_statistics(init, apply):
  params, state = init
  params = with_random_classifier(params)
  x = images(2)
  other = x.at[1:].set(images(4)[1:])  # Same first example, different batch-mates.

  def logits(p, s, batch, is_training):
    (out, _), new_state = apply(p, s, rbg_key(1), batch, is_training)
    return out, new_state

  train, train_state = logits(params, state, x, True)
  train_other, _ = logits(params, state, other, True)
  assert not np.allclose(train[0], train_other[0], atol=1e-4)  # Batch statistics.
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), train_state, state)
  assert all(jax.tree.leaves(moved))  # Every moving average, hidden value and counter.
  evaluated, eval_state = logits(params, state, x, False)
  evaluated_other, _ = logits(params, state, other, False)
  np.testing.assert_allclose(evaluated[0], evaluated_other[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(evaluated, train, atol=1e-4)
  for new, old in zip(jax.tree.leaves(eval_state), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(new, old)  # Evaluation leaves the statistics alone.
  stem_mean = "bn_regnet/stem_bn/~/mean_ema"
  shifted = {**state, stem_mean: {**state[stem_mean], "average": state[stem_mean]["average"] + 1}}
  assert not np.allclose(logits(params, shifted, x, False)[0], evaluated, atol=1e-4)


def test_registry_and_configs():
  assert models.uses_batch_norm("bn_regnet")
  assert "cross_replica_axis" in models.config_fields("bn_regnet")
  small = cifar10_config("model=bn_regnet,variant=B1,width=0.5")
  assert small.model_name == "bn_regnet"
  assert small.model.to_dict() == {
    "variant": "B1",
    "width": 0.5,
    "dropout_rate": 0.0,
    "remat": False,
  }
  assert models.model_kwargs(small, 10)["variant"] == "B1"
  smoke = cifar10_config("model=bn_regnet,smoke")
  assert (smoke.model.variant, smoke.model.width, smoke.data.name) == ("B0", 0.125, "synthetic")
  full = imagenet.get_config("model=bn_regnet,variant=B2")
  nf = imagenet.get_config("model=nf_regnet,variant=B2")
  assert full.model_name == "bn_regnet" and full.model.to_dict() == nf.model.to_dict()
  assert (full.data.image_size, full.train.ema_decay) == (nf.data.image_size, nf.train.ema_decay)
  with pytest.raises(ConfigError, match="model=bn_regnet is always regularized"):
    imagenet.get_config("model=bn_regnet,regularized")
