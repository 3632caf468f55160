"""NF-ResNets (paper Section 4) and the ResNet stem shared by every ResNet model."""

from __future__ import annotations

import functools
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.activations import ActivationLike, get_activation, scaled_activation
from nfresnet.blocks import NF_BLOCKS, ConvFactory, ResidualBlock, call_block
from nfresnet.layout import STEMS, check_choice, resnet_specs
from nfresnet.pooling import max_pool
from nfresnet.stacking import stacked_blocks
from nfresnet.ws_conv import FAN_IN_NORMAL, Conv2D, WSConv2D

CLASSIFIER_INIT = hk.initializers.RandomNormal(0.01)


def resnet_stem(
  x: jax.Array, stem: str, channels: int, conv: ConvFactory, **conv_kwargs
) -> jax.Array:
  """ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max pool) or CIFAR stem (3x3 conv).

  ``imagenet_no_pool`` is a 7x7 stride-4 conv: the ImageNet stem's output size
  without the max pool, whose positive channel means a network without Scaled
  WS cannot remove (the He-init signal-propagation networks). No activation
  follows the conv: every block pre-activates its input.
  """
  if stem == "cifar":
    return conv(channels, 3, stride=1, name="stem", **conv_kwargs)(x)
  if stem == "imagenet_no_pool":
    return conv(channels, 7, stride=4, name="stem", **conv_kwargs)(x)
  x = conv(channels, 7, stride=2, name="stem", **conv_kwargs)(x)
  return max_pool(x, window=3, stride=2, padding="SAME")


def classifier_head(
  h: jax.Array,
  num_classes: int,
  dropout_rate: float,
  is_training: bool,
  w_init: hk.initializers.Initializer = CLASSIFIER_INIT,
) -> jax.Array:
  """Global average pool (float32), dropout when training, linear classifier."""
  pooled = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
  if is_training and dropout_rate > 0.0:
    pooled = hk.dropout(hk.next_rng_key(), dropout_rate, pooled)
  return hk.Linear(num_classes, w_init=w_init, name="classifier")(pooled)


class NFResNet(hk.Module):
  """Normalizer-free pre-activation ResNet (paper Section 4).

  With default arguments and ``num_classes=1000`` the layer list mirrors the
  reference NF-ResNet-50 (25,557,048 parameters).

  Args:
    num_classes: classifier outputs.
    depth: one of 18, 26, 34, 50, 101, 152, 200, 288, 600 (18/34: basic blocks).
    width: multiplies every channel count.
    alpha: residual scale; variance grows by ``alpha**2`` per block.
    activation: registered name or callable; scaled by its gamma.
    skip_gain_init: initial value of each block's scalar skip gain (1 for SPPs).
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule.
    dropout_rate: dropout before the classifier (training only).
    use_se: squeeze-excite on every branch.
    se_ratio: squeeze-excite hidden width as a fraction of the channels.
    stem: "imagenet", "imagenet_no_pool" (7x7 stride-4 conv, no max pool) or
      "cifar" (3x3 stride 1, no pooling, for small images).
    weight_standardization: False gives the paper's "NF, He init" network
      (plain He-normal convs, activations not gamma-scaled). Its stem conv
      follows He et al.'s first-layer rule, variance 1 / fan-in (no ReLU
      precedes it), so the stem output has the unit variance beta_0 = 1
      assumes, as the Scaled WS stem (gain 1) does.
    reference_gammas: use the reference code's hard-coded gammas.
    scale_activations: multiply every activation by its gamma (paper Section 4,
      "Determining nonlinearity-specific constants"); False is the control network
      whose nonlinearities are not variance-normalized.
    rescale_stochdepth: divide kept branches by the keep probability.
    avg_down: ResNet-D average-pool downsampling in transition shortcuts.
    block: a ``ResidualBlock`` subclass replacing the default block type.
    stack_blocks: run each stage's non-transition blocks as one scan
      (``nfresnet.stacking``): same numerics, compile time independent of
      depth, parameters ``stage{s}_blocks/...`` with a leading block axis.
    remat: recompute each residual block's activations in the backward pass
      (``nfresnet.blocks.call_block``): less activation memory for about one more
      forward pass; same parameters and numerics. Works with ``stack_blocks``.
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    depth: int = 50,
    *,
    width: float = 1.0,
    alpha: float = 0.2,
    activation: ActivationLike = "relu",
    skip_gain_init: float = 0.0,
    stochdepth_rate: float = 0.0,
    dropout_rate: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    stem: str = "imagenet",
    weight_standardization: bool = True,
    reference_gammas: bool = False,
    scale_activations: bool = True,
    rescale_stochdepth: bool = False,
    avg_down: bool = False,
    block: type[ResidualBlock] | None = None,
    stack_blocks: bool = False,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "nf_resnet")
    check_choice("stem", stem, STEMS)
    block_type, self.stem_width, self.specs = resnet_specs(
      depth, width=width, alpha=alpha, stochdepth_rate=stochdepth_rate
    )
    self.num_classes = num_classes
    self.stem = stem
    self.dropout_rate = dropout_rate
    self.conv: ConvFactory = WSConv2D if weight_standardization else Conv2D
    self.stem_conv: ConvFactory = (
      WSConv2D if weight_standardization else functools.partial(Conv2D, w_init=FAN_IN_NORMAL)
    )
    self.activation: Callable[[jax.Array], jax.Array] = (
      scaled_activation(activation, reference=reference_gammas)
      if weight_standardization and scale_activations
      else get_activation(activation)
    )
    self.classifier_init: hk.initializers.Initializer = CLASSIFIER_INIT
    self.block_cls = block or NF_BLOCKS[block_type]
    self.stack_blocks = stack_blocks
    self.remat = remat
    self.block_kwargs = dict(
      activation=self.activation,
      alpha=alpha,
      skip_gain_init=skip_gain_init,
      use_se=use_se,
      se_ratio=se_ratio,
      avg_down=avg_down,
      rescale_stochdepth=rescale_stochdepth,
      conv=self.conv,
    )

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    h = resnet_stem(x, self.stem, self.stem_width, self.stem_conv)
    make_block = functools.partial(self.block_cls, **self.block_kwargs)
    if self.stack_blocks:
      h = stacked_blocks(make_block, self.specs, h, is_training, remat=self.remat)
    else:
      for spec in self.specs:
        h = call_block(make_block(spec), h, is_training, self.remat)
    h = self.activation(h)
    return classifier_head(
      h, self.num_classes, self.dropout_rate, is_training, self.classifier_init
    )
