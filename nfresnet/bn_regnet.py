"""BN-RegNets: BatchNorm counterparts of the NF-RegNets (paper Section 5.2, Table 3).

The paper compares NF-RegNets with BatchNorm networks of the same design
(EfficientNets). ``BNRegNet`` keeps the NF-RegNet layout (``regnet_specs``:
stage widths, depths and strides, expanded widths and groups, squeeze-excite,
head width) and replaces the normalizer-free machinery by the standard BN
inverted bottleneck of EfficientNet/RegNet blocks:

- stem: 3x3 stride-2 conv -> BN -> g;
- blocks (``BNRegNetBlock``): ``shortcut(x) + stochastic_depth(branch(x))`` with
  branch ``conv0 (1x1) -> BN -> g -> conv1 (3x3, grouped, stride) -> BN -> g ->
  squeeze-excite -> conv2 (1x1) -> BN`` and no activation after the addition. The
  last BN's scale starts at zero, so every branch starts at zero (the NF model's
  zero skip gain). The shortcut is the identity, or on a transition a 2x2 average
  pool (when strided), a 1x1 conv and BN;
- head: 1x1 conv -> BN -> g -> global average pool -> dropout -> zero-initialised
  linear classifier.

Convs are bias-free plain convs (He-normal by default), activations are not
gamma-scaled, and there is no alpha, beta or skip gain. Squeeze-excite
(``SqueezeExcite``, gate ``2 * sigmoid``) and stochastic depth (the NF-RegNet's
per-block rates, not rescaled) are the NF model's, so the two networks differ only
in normalization. BatchNorm follows ``nfresnet.baselines.ResNetV2``: float32, decay
0.9, Haiku's epsilon 1e-5, per-device statistics unless ``cross_replica_axis`` is
set. Use ``hk.transform_with_state``: the state holds the moving statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.activations import ActivationLike, get_activation
from nfresnet.baselines import ZEROS, BNConfig, plain_conv
from nfresnet.blocks import (
  ResidualBlock,
  call_block,
  projection_shortcut,
  squeeze_excite,
  stochastic_depth,
)
from nfresnet.layout import BlockSpec
from nfresnet.nf_regnet import NF_REGNET_VARIANTS, expanded_width, head_width, regnet_specs
from nfresnet.nf_resnet import classifier_head


def batch_norm(
  x: jax.Array,
  bn: BNConfig,
  name: str,
  is_training: bool,
  scale_init: hk.initializers.Initializer | None = None,
) -> jax.Array:
  """``hk.BatchNorm`` in float32, as ``nfresnet.baselines.norm_act`` builds it.

  During ``init`` it uses batch statistics, so that its moving averages are
  created even when the model is initialized in evaluation mode.

  Args:
    x: input, any float dtype; the output has the same dtype.
    bn: decay and cross-replica axis (``bn.order`` is not used).
    name: module name.
    is_training: batch statistics (and moving-average updates) when True,
      moving statistics when False.
    scale_init: initializer of the scale; None for ones.
  """
  module = hk.BatchNorm(
    True,
    True,
    bn.decay,
    scale_init=scale_init,
    cross_replica_axis=bn.cross_replica_axis,
    name=name,
  )
  use_batch_stats = is_training or hk.running_init()
  return module(x.astype(jnp.float32), use_batch_stats).astype(x.dtype)


def conv_bn(
  x: jax.Array,
  conv: hk.Module,
  bn: BNConfig,
  is_training: bool,
  scale_init: hk.initializers.Initializer | None = None,
) -> jax.Array:
  """``conv(x)`` then a BatchNorm named after the conv (``conv0`` -> ``conv0_bn``)."""
  return batch_norm(conv(x), bn, f"{conv.name}_bn", is_training, scale_init)


class BNRegNetBlock(ResidualBlock):
  """BatchNorm inverted-bottleneck RegNet block with squeeze-excite.

  Args:
    spec: the block's layout (channels, stride, projection shortcut, drop rate).
    expansion: expanded width relative to ``spec.in_channels``.
    group_width: channels per group of the 3x3 conv.
    se_ratio: squeeze-excite hidden width as a fraction of the expanded width.
    activation: the (unscaled) nonlinearity.
    bn: BatchNorm decay and cross-replica axis.
    conv: conv module factory (bias-free plain convs).
  """

  def __init__(
    self,
    spec: BlockSpec,
    *,
    expansion: float,
    group_width: int,
    se_ratio: float,
    activation: Callable[[jax.Array], jax.Array],
    bn: BNConfig,
    conv: Callable[..., hk.Module],
  ):
    super().__init__(name=spec.name)
    self.spec = spec
    self.expansion = expansion
    self.group_width = group_width
    self.se_ratio = se_ratio
    self.activation = activation
    self.bn = bn
    self.conv = conv

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    spec, conv, bn = self.spec, self.conv, self.bn
    width, groups = expanded_width(spec.in_channels, self.expansion, self.group_width)
    out = self.activation(conv_bn(x, conv(width, 1, name="conv0"), bn, is_training))
    conv1 = conv(width, 3, stride=spec.stride, feature_group_count=groups, name="conv1")
    out = squeeze_excite(self.activation(conv_bn(out, conv1, bn, is_training)), self.se_ratio)
    conv2 = conv(spec.out_channels, 1, name="conv2")
    return conv_bn(out, conv2, bn, is_training, scale_init=ZEROS)

  @hk.transparent
  def shortcut(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Identity, or on a transition average pool (if strided), 1x1 conv and BN."""
    if not self.spec.use_projection:
      return x
    out = projection_shortcut(x, self.spec, self.conv, avg_down=True)
    return batch_norm(out, self.bn, "conv_shortcut_bn", is_training)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    residual = self.residual_output(self.branch(x, is_training))
    residual = stochastic_depth(residual, self.spec.stochdepth_rate, is_training)
    return self.shortcut(x, is_training) + residual


class BNRegNet(hk.Module):
  """BatchNorm RegNet with the NF-RegNet layout (paper Section 5.2, Table 3).

  Same stages, widths, groups, squeeze-excite and head as ``NFRegNet`` of the same
  arguments; the BN layers have as many parameters as the WS gains and biases
  they replace, so the count is ``NFRegNet``'s minus one skip gain per block.

  Args:
    num_classes: classifier outputs.
    variant: "B0" to "B5" (``NF_REGNET_VARIANTS``).
    width: multiplies every base width (0.75 in the paper).
    expansion: inverted-bottleneck expansion relative to the block input (the
      network's first block uses 1).
    group_width: channels per group in the 3x3 convs.
    se_ratio: squeeze-excite hidden width as a fraction of the expanded width.
    activation: registered name or callable, not gamma-scaled.
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule.
    dropout_rate: dropout before the classifier; None takes the variant's.
    bn_decay: BatchNorm moving-average decay.
    cross_replica_axis: mapped axis name for cross-replica BN statistics; None
      keeps per-device statistics.
    conv_init: kernel init of every conv, a key of ``nfresnet.ws_conv.CONV_INITS``
      ("he": He-normal over the fan-in).
    remat: recompute each block's activations in the backward pass
      (``nfresnet.blocks.call_block``); same parameters, state and numerics.
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    variant: str = "B0",
    *,
    width: float = 0.75,
    expansion: float = 2.25,
    group_width: int = 8,
    se_ratio: float = 0.5,
    activation: ActivationLike = "silu",
    stochdepth_rate: float = 0.1,
    dropout_rate: float | None = None,
    bn_decay: float = 0.9,
    cross_replica_axis: str | None = None,
    conv_init: str = "he",
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "bn_regnet")
    self.stem_width, self.specs = regnet_specs(
      variant, width=width, stochdepth_rate=stochdepth_rate
    )
    row = NF_REGNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.variant = variant
    self.train_resolution = row.train_resolution
    self.test_resolution = row.test_resolution
    self.dropout_rate = row.dropout_rate if dropout_rate is None else dropout_rate
    self.head_width = head_width(self.specs[-1].out_channels)
    self.expansion = expansion
    self.remat = remat
    self.bn = BNConfig(decay=bn_decay, cross_replica_axis=cross_replica_axis)
    self.conv = plain_conv(conv_init)
    self.activation = get_activation(activation)
    self.block_kwargs = dict(
      group_width=group_width,
      se_ratio=se_ratio,
      activation=self.activation,
      bn=self.bn,
      conv=self.conv,
    )

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    stem = self.conv(self.stem_width, 3, stride=2, name="stem")
    h = self.activation(conv_bn(x, stem, self.bn, is_training))
    for spec in self.specs:
      expansion = 1.0 if spec.index == 0 else self.expansion
      block = BNRegNetBlock(spec, expansion=expansion, **self.block_kwargs)
      h = call_block(block, h, is_training, self.remat)
    head = self.conv(self.head_width, 1, name="final_conv")
    h = self.activation(conv_bn(h, head, self.bn, is_training))
    return classifier_head(h, self.num_classes, self.dropout_rate, is_training, w_init=ZEROS)
