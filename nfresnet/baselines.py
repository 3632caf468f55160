"""Baselines the paper compares against (paper Figure 1 and Table 1).

``ResNetV2``: pre-activation BatchNorm ResNet in BN-ReLU-Conv or ReLU-BN-Conv
order (use ``hk.transform_with_state``). ``SkipInitResNet``: no normalization,
a zero-init scalar gain on every branch. ``FixupResNet``: scalar biases and
multipliers with rescaled init. All share the NF-ResNet depth table and stems.
"""

from __future__ import annotations

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.blocks import ResidualBlock, call_block, stochastic_depth
from nfresnet.layout import BOTTLENECK_EXPANSION, STEMS, BlockSpec, check_choice, resnet_specs
from nfresnet.nf_resnet import NFResNet, classifier_head, resnet_stem
from nfresnet.ws_conv import CONV_INITS, HAIKU_DEFAULT, Conv2D

BN_ORDERS = ("bn_relu", "relu_bn")
PlainConv = functools.partial(Conv2D, with_bias=False)
ZEROS = hk.initializers.Constant(0.0)


def plain_conv(conv_init: str, with_bias: bool = False):
  """A bias-free (or biased) plain conv factory with the ``CONV_INITS[conv_init]`` kernel init."""
  check_choice("conv_init", conv_init, tuple(CONV_INITS))
  return functools.partial(Conv2D, with_bias=with_bias, w_init=CONV_INITS[conv_init])


@dataclasses.dataclass(frozen=True)
class BNConfig:
  """How BatchNorm-activation pairs are built.

  Attributes:
    order: "bn_relu" (BN-ReLU-Conv) or "relu_bn" (ReLU-BN-Conv).
    decay: BatchNorm moving-average decay.
    cross_replica_axis: mapped axis name for cross-replica statistics; None
      keeps per-device statistics.
  """

  order: str = "bn_relu"
  decay: float = 0.9
  cross_replica_axis: str | None = None


def norm_act(x: jax.Array, bn: BNConfig, name: str, is_training: bool) -> jax.Array:
  """BN then ReLU ("bn_relu") or ReLU then BN ("relu_bn"); BN runs in float32.

  During ``init`` BN always uses batch statistics so that its moving averages
  are created even when the model is initialized in evaluation mode.
  """
  module = hk.BatchNorm(True, True, bn.decay, cross_replica_axis=bn.cross_replica_axis, name=name)
  use_batch_stats = is_training or hk.running_init()

  def normalize(v):
    return module(v.astype(jnp.float32), use_batch_stats).astype(x.dtype)

  if bn.order == "bn_relu":
    return jax.nn.relu(normalize(x))
  return normalize(jax.nn.relu(x))


class BNBlock(ResidualBlock):
  """Pre-activation BatchNorm block; the shortcut conv sees the pre-activated input.

  Args:
    spec: the block's layout (channels, stride, projection shortcut).
    block_type: "bottleneck" or "basic".
    bn: BatchNorm order, decay and cross-replica axis.
    conv_init: kernel init of the convs, a key of ``CONV_INITS``.
  """

  def __init__(self, spec: BlockSpec, *, block_type: str, bn: BNConfig, conv_init: str = "haiku"):
    super().__init__(name=spec.name)
    self.spec = spec
    self.block_type = block_type
    self.bn = bn
    self.conv = plain_conv(conv_init)

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    spec, bn, conv = self.spec, self.bn, self.conv
    if self.block_type == "basic":
      out = conv(spec.out_channels, 3, stride=spec.stride, name="conv0")(x)
      return conv(spec.out_channels, 3, name="conv1")(norm_act(out, bn, "bn1", is_training))
    mid = max(1, spec.out_channels // BOTTLENECK_EXPANSION)
    out = conv(mid, 1, name="conv0")(x)
    out = conv(mid, 3, stride=spec.stride, name="conv1")(norm_act(out, bn, "bn1", is_training))
    return conv(spec.out_channels, 1, name="conv2")(norm_act(out, bn, "bn2", is_training))

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    pre = norm_act(x, self.bn, "bn0", is_training)
    shortcut = x
    if self.spec.use_projection:
      shortcut = self.conv(
        self.spec.out_channels, 1, stride=self.spec.stride, name="conv_shortcut"
      )(pre)
    return shortcut + self.residual_output(self.branch(pre, is_training))


class ResNetV2(hk.Module):
  """Pre-activation BatchNorm ResNet (paper Figure 1, Table 1); mirrors ``hk.nets.ResNet`` v2.

  Convs without bias (Haiku's default init, as the reference; ``conv_init="he"`` for
  He-normal), final BN-ReLU before pooling, zero-init
  classifier. ResNetV2-50 with 1000 classes has 25,549,352 parameters.

  Args:
    num_classes: classifier outputs.
    depth: same table as ``NFResNet``.
    width: multiplies every channel count.
    order: "bn_relu" (BN-ReLU-Conv) or "relu_bn" (ReLU-BN-Conv).
    bn_decay: BatchNorm moving-average decay.
    cross_replica_axis: mapped axis name for cross-replica BN statistics; None
      keeps per-device statistics (the paper's baseline).
    stem: one of ``nfresnet.layout.STEMS`` (see ``resnet_stem``).
    conv_init: kernel init of every conv: "haiku" (the reference's) or "he".
    dropout_rate: dropout before the classifier (training only).
    remat: recompute each block's activations in the backward pass
      (``nfresnet.blocks.call_block``); same parameters, state and numerics.
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    depth: int = 50,
    *,
    width: float = 1.0,
    order: str = "bn_relu",
    bn_decay: float = 0.9,
    cross_replica_axis: str | None = None,
    stem: str = "imagenet",
    conv_init: str = "haiku",
    dropout_rate: float = 0.0,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "resnet_v2")
    check_choice("order", order, BN_ORDERS)
    check_choice("stem", stem, STEMS)
    self.block_type, self.stem_width, self.specs = resnet_specs(depth, width=width)
    self.num_classes = num_classes
    self.bn = BNConfig(order, bn_decay, cross_replica_axis)
    self.stem = stem
    self.dropout_rate = dropout_rate
    self.conv_init = conv_init
    self.conv = plain_conv(conv_init)
    self.remat = remat

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    h = resnet_stem(x, self.stem, self.stem_width, self.conv)
    for spec in self.specs:
      block = BNBlock(spec, block_type=self.block_type, bn=self.bn, conv_init=self.conv_init)
      h = call_block(block, h, is_training, self.remat)
    h = norm_act(h, self.bn, "final_bn", is_training)
    return classifier_head(h, self.num_classes, self.dropout_rate, is_training, w_init=ZEROS)


class SkipInitResNet(NFResNet):
  """SkipInit (De & Smith, 2020): ``x + skip_gain * f(relu(x))``, no normalization.

  The NF block with ``beta = 1``, ``alpha = 1`` and plain ReLU, as the reference
  implementation builds it: block convs with biases, a bias-free stem conv, Haiku's
  default conv init (``conv_init="he"`` for He-normal), a zero-initialized classifier
  and ``skip_gain`` starting at 0. ResNet-50 with 1000 classes: 25,530,424 parameters.

  Args:
    num_classes: classifier outputs.
    depth: same table as ``NFResNet``.
    width: multiplies every channel count.
    stem: one of ``nfresnet.layout.STEMS`` (see ``resnet_stem``).
    conv_init: kernel init of every conv: "haiku" (the reference's) or "he".
    dropout_rate: dropout before the classifier (training only).
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule.
    skip_gain_init: initial value of each block's scalar skip gain.
    remat: recompute each block's activations in the backward pass (as ``NFResNet``).
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    depth: int = 50,
    *,
    width: float = 1.0,
    stem: str = "imagenet",
    conv_init: str = "haiku",
    dropout_rate: float = 0.0,
    stochdepth_rate: float = 0.0,
    skip_gain_init: float = 0.0,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(
      num_classes,
      depth,
      width=width,
      alpha=1.0,
      activation="relu",
      skip_gain_init=skip_gain_init,
      stochdepth_rate=stochdepth_rate,
      dropout_rate=dropout_rate,
      stem=stem,
      weight_standardization=False,
      remat=remat,
      name=name or "skipinit_resnet",
    )
    self.specs = [dataclasses.replace(s, beta=1.0) for s in self.specs]
    self.conv = plain_conv(conv_init, with_bias=True)
    self.block_kwargs["conv"] = self.conv
    self.stem_conv = plain_conv(conv_init, with_bias=False)
    self.classifier_init = ZEROS


def _bias(name: str) -> jax.Array:
  return hk.get_parameter(name, (), jnp.float32, init=jnp.zeros)


class FixupBlock(ResidualBlock):
  """Fixup block (Zhang et al., 2019) as the reference implementation computes it.

  ``relu(shortcut(x + b0a) + sd(scale * branch(x + b0a) + b_out))``: the biased input
  ``x + b0a`` feeds the branch and the shortcut, identity or projection (the original
  Fixup code feeds the identity shortcut the raw ``x``); ``sd`` is stochastic depth
  (per-example, not rescaled). Inside the branch every conv is preceded by a scalar bias
  and followed by a scalar bias and ReLU. Inner convs are He-normal over their fan-out,
  scaled by ``L ** (-1 / (2m - 2))`` (m convs per branch, L blocks); the last conv is
  zero-initialized; the projection shortcut is He-normal over its fan-out.

  Args:
    spec: the block's layout (channels, stride, projection shortcut, stochastic depth).
    block_type: "bottleneck" (m = 3) or "basic" (m = 2).
    num_blocks: number of residual blocks L in the network.
  """

  def __init__(self, spec: BlockSpec, *, block_type: str, num_blocks: int):
    super().__init__(name=spec.name)
    self.spec = spec
    self.block_type = block_type
    convs = 2 if block_type == "basic" else 3
    scale = num_blocks ** (-1.0 / (2 * convs - 2))
    self.inner_init = hk.initializers.VarianceScaling(2.0 * scale**2, "fan_out", "normal")
    self.shortcut_init = hk.initializers.VarianceScaling(2.0, "fan_out", "normal")

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    spec = self.spec
    conv = functools.partial(PlainConv, w_init=self.inner_init)
    mid = spec.out_channels if self.block_type == "basic" else max(1, spec.out_channels // 4)
    out = conv(
      mid,
      3 if self.block_type == "basic" else 1,
      stride=spec.stride if self.block_type == "basic" else 1,
      name="conv0",
    )(x)
    out = jax.nn.relu(out + _bias("bias0b").astype(out.dtype)) + _bias("bias1a").astype(out.dtype)
    if self.block_type == "bottleneck":
      out = conv(mid, 3, stride=spec.stride, name="conv1")(out)
      out = jax.nn.relu(out + _bias("bias1b").astype(out.dtype)) + _bias("bias2a").astype(out.dtype)
    last = "conv1" if self.block_type == "basic" else "conv2"
    return PlainConv(
      spec.out_channels, 3 if self.block_type == "basic" else 1, w_init=ZEROS, name=last
    )(out)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    biased = x + _bias("bias0a").astype(x.dtype)
    shortcut = biased
    if self.spec.use_projection:
      shortcut = PlainConv(
        self.spec.out_channels,
        1,
        stride=self.spec.stride,
        w_init=self.shortcut_init,
        name="conv_shortcut",
      )(biased)
    residual = self.residual_output(self.branch(biased, is_training))
    scale = hk.get_parameter("scale", (), jnp.float32, init=jnp.ones)
    residual = residual * scale.astype(residual.dtype) + _bias("bias_out").astype(residual.dtype)
    residual = stochastic_depth(residual, self.spec.stochdepth_rate, is_training)
    return jax.nn.relu(shortcut + residual)


class FixupResNet(hk.Module):
  """Fixup ResNet (paper Table 1) as in the reference implementation.

  Stem: a bias-free conv with Haiku's default init, then a scalar bias and ReLU (the max
  pool of the ImageNet stem commutes with both). Head: average pool, dropout, a scalar
  bias, then a zero-initialized classifier. ResNet-50 with 1000 classes: 25,504,026
  parameters.

  Args:
    num_classes: classifier outputs.
    depth: same table as ``NFResNet``.
    width: multiplies every channel count.
    stem: one of ``nfresnet.layout.STEMS`` (see ``resnet_stem``).
    dropout_rate: dropout before the classifier (training only).
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule (the
      reference's default is 0.1).
    remat: recompute each block's activations in the backward pass
      (``nfresnet.blocks.call_block``); same parameters and numerics.
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    depth: int = 50,
    *,
    width: float = 1.0,
    stem: str = "imagenet",
    dropout_rate: float = 0.0,
    stochdepth_rate: float = 0.0,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "fixup_resnet")
    check_choice("stem", stem, STEMS)
    self.block_type, self.stem_width, self.specs = resnet_specs(
      depth, width=width, stochdepth_rate=stochdepth_rate
    )
    self.num_classes = num_classes
    self.stem = stem
    self.dropout_rate = dropout_rate
    self.remat = remat

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    stem_conv = functools.partial(PlainConv, w_init=HAIKU_DEFAULT)
    h = resnet_stem(x, self.stem, self.stem_width, stem_conv)
    h = jax.nn.relu(h + _bias("stem_bias").astype(h.dtype))
    for spec in self.specs:
      block = FixupBlock(spec, block_type=self.block_type, num_blocks=len(self.specs))
      h = call_block(block, h, is_training, self.remat)
    pooled = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    if is_training and self.dropout_rate > 0.0:
      pooled = hk.dropout(hk.next_rng_key(), self.dropout_rate, pooled)
    pooled = pooled + _bias("head_bias")
    return hk.Linear(self.num_classes, w_init=ZEROS, name="classifier")(pooled)
