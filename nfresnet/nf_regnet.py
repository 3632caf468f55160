"""NF-RegNets B0-B5: the paper's normalizer-free EfficientNet competitors (Table 3).

The layer list mirrors the reference architecture so parameter counts match it
exactly:

- stem: 3x3 stride-2 Scaled-WS conv to ``int(base_width[0] * width)`` channels,
  no activation;
- blocks (``NFRegNetBlock``): pre-activation ``g(x) / beta`` as in every NF
  block (paper Section 4), then an inverted bottleneck: 1x1 expansion conv -> g
  -> grouped 3x3 conv (stride 2 in the first block of every stage) ->
  squeeze-excite -> g -> 1x1 projection conv. Transition shortcuts average-pool
  ``g(x) / beta`` (2x2, stride 2) and apply a 1x1 conv;
- head: 1x1 conv to ``int(1280 * C_last // 440)`` channels -> g -> global
  average pool -> dropout -> zero-initialised linear classifier.

Beta and stochastic-depth bookkeeping come from ``nfresnet.layout.block_specs``,
shared with the NF-ResNets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import haiku as hk
import jax

from nfresnet.activations import ActivationLike, scaled_activation
from nfresnet.blocks import NFBlock, call_block
from nfresnet.layout import BlockSpec, block_specs, check_choice, scale_width
from nfresnet.nf_resnet import classifier_head
from nfresnet.ws_conv import WSConv2D

# Every stage halves the resolution in its first block (the stem halves it first).
REGNET_STAGE_STRIDES = (2, 2, 2, 2)
# Head width: EfficientNet's 1280 channels for a 440-channel last stage, scaled.
HEAD_WIDTH, HEAD_REFERENCE_WIDTH = 1280, 440


@dataclasses.dataclass(frozen=True)
class NFRegNetVariant:
  """One row of the NF-RegNet table (paper Table 3, reference variant table).

  Attributes:
    widths: base stage widths, multiplied by the model's ``width``.
    depths: blocks per stage.
    train_resolution: training image size.
    test_resolution: evaluation image size (FLOPs are reported here).
    dropout_rate: dropout before the classifier.
  """

  widths: tuple[int, int, int, int]
  depths: tuple[int, int, int, int]
  train_resolution: int
  test_resolution: int
  dropout_rate: float


NF_REGNET_VARIANTS: dict[str, NFRegNetVariant] = {
  "B0": NFRegNetVariant((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
  "B1": NFRegNetVariant((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
  "B2": NFRegNetVariant((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
  "B3": NFRegNetVariant((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
  "B4": NFRegNetVariant((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
  "B5": NFRegNetVariant((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
}


def expanded_width(in_channels: int, expansion: float, group_width: int) -> tuple[int, int]:
  """Width of the inverted bottleneck and its group count.

  ``int(in_channels * expansion)`` rounded down to a multiple of
  ``group_width`` (at least one group).

  Returns:
    ``(width, groups)`` with ``width == groups * group_width``.
  """
  groups = max(1, int(in_channels * expansion) // group_width)
  return groups * group_width, groups


def head_width(last_stage_width: int) -> int:
  """Channels of the final 1x1 conv: ``int(1280 * C_last // 440)``."""
  return int(HEAD_WIDTH * last_stage_width // HEAD_REFERENCE_WIDTH)


class NFRegNetBlock(NFBlock):
  """Normalizer-free inverted-bottleneck RegNet block with squeeze-excite.

  ``NFBlock.__call__`` supplies ``g(x) / beta``, the shortcut (with
  ``avg_down=True``: 2x2 average pool then 1x1 conv on a transition), skip gain,
  alpha and stochastic depth; ``branch`` is
  ``conv0 (1x1) -> g -> conv1 (3x3, grouped, stride) -> SE -> g -> conv2 (1x1)``.

  Args:
    spec: the block's layout (channels, stride, beta, drop rate).
    expansion: expanded width relative to ``spec.in_channels``.
    group_width: channels per group of the 3x3 conv.
    **kwargs: forwarded to ``NFBlock`` (activation, alpha, skip_gain_init,
      use_se, se_ratio, avg_down, rescale_stochdepth, conv).
  """

  def __init__(self, spec: BlockSpec, *, expansion: float, group_width: int, **kwargs):
    super().__init__(spec, **kwargs)
    self.expansion = expansion
    self.group_width = group_width

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    width, groups = expanded_width(self.spec.in_channels, self.expansion, self.group_width)
    out = self.conv(width, 1, name="conv0")(x)
    out = self.conv(width, 3, stride=self.spec.stride, feature_group_count=groups, name="conv1")(
      self.activation(out)
    )
    out = self.squeeze_excite(out)
    return self.conv(self.spec.out_channels, 1, name="conv2")(self.activation(out))


def regnet_specs(
  variant: str, *, width: float = 0.75, alpha: float = 0.2, stochdepth_rate: float = 0.0
) -> tuple[int, list[BlockSpec]]:
  """Stem width and block specs of an NF-RegNet variant."""
  check_choice("variant", variant, tuple(NF_REGNET_VARIANTS))
  row = NF_REGNET_VARIANTS[variant]
  widths = [scale_width(c, width) for c in row.widths]
  specs = block_specs(
    row.depths,
    widths,
    REGNET_STAGE_STRIDES,
    widths[0],
    alpha=alpha,
    stochdepth_rate=stochdepth_rate,
  )
  return widths[0], specs


class NFRegNet(hk.Module):
  """Normalizer-free RegNet (paper Table 3), variants B0-B5.

  With default arguments and ``num_classes=1000`` the layer list mirrors the
  reference NF-RegNets, so parameter counts equal the reference's.

  Args:
    num_classes: classifier outputs.
    variant: "B0" to "B5" (``NF_REGNET_VARIANTS``).
    width: multiplies every base width (0.75 in the paper).
    expansion: inverted-bottleneck expansion relative to the block input (the
      network's first block uses 1).
    group_width: channels per group in the 3x3 convs.
    se_ratio: squeeze-excite hidden width as a fraction of the expanded width.
    alpha: residual scale; variance grows by ``alpha**2`` per block.
    activation: registered name or callable; scaled by its gamma.
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule.
    dropout_rate: dropout before the classifier; None takes the variant's.
    skip_gain_init: initial value of each block's scalar skip gain (1 for SPPs).
    reference_gammas: use the reference code's hard-coded gammas.
    remat: recompute each block's activations in the backward pass
      (``nfresnet.blocks.call_block``); same parameters and numerics.
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
    alpha: float = 0.2,
    activation: ActivationLike = "silu",
    stochdepth_rate: float = 0.1,
    dropout_rate: float | None = None,
    skip_gain_init: float = 0.0,
    reference_gammas: bool = False,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "nf_regnet")
    self.stem_width, self.specs = regnet_specs(
      variant, width=width, alpha=alpha, stochdepth_rate=stochdepth_rate
    )
    row = NF_REGNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.variant = variant
    self.train_resolution = row.train_resolution
    self.test_resolution = row.test_resolution
    self.dropout_rate = row.dropout_rate if dropout_rate is None else dropout_rate
    self.head_width = head_width(self.specs[-1].out_channels)
    self.expansion = expansion
    self.group_width = group_width
    self.remat = remat
    self.activation: Callable[[jax.Array], jax.Array] = scaled_activation(
      activation, reference=reference_gammas
    )
    self.block_kwargs = dict(
      activation=self.activation,
      alpha=alpha,
      skip_gain_init=skip_gain_init,
      use_se=True,
      se_ratio=se_ratio,
      avg_down=True,
      conv=WSConv2D,
    )

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    h = WSConv2D(self.stem_width, 3, stride=2, name="stem")(x)
    for spec in self.specs:
      expansion = 1.0 if spec.index == 0 else self.expansion
      block = NFRegNetBlock(
        spec, expansion=expansion, group_width=self.group_width, **self.block_kwargs
      )
      h = call_block(block, h, is_training, self.remat)
    h = self.activation(WSConv2D(self.head_width, 1, name="final_conv")(h))
    return classifier_head(
      h, self.num_classes, self.dropout_rate, is_training, w_init=hk.initializers.Constant(0.0)
    )
