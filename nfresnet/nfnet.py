"""NFNets F0-F7: Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image
Recognition Without Normalization" (arXiv 2102.06171).

The layer list mirrors the authors' reference NFNet (deepmind-research
``nfnets/nfnet.py``), so parameter counts equal the reference's (F0: 71.5M,
F1: 132.6M in its README; exact integers in docs/paper_map.md, "NFNets"):

- stem: four 3x3 Scaled-WS convs, 16 (stride 2) -> g -> 32 -> g -> 64 -> g ->
  half the first stage's base width (128, stride 2), no activation after the
  last one. The stem widths do not scale with ``width``, as in the reference;
- blocks (``NFNetBlock``): pre-activation ``g(x) / beta`` as in every NF block
  (paper Section 4 of arXiv 2101.08692), then 1x1 conv -> g -> grouped 3x3 conv
  (stride) -> g -> grouped 3x3 conv -> g -> 1x1 conv -> squeeze-excite on the
  output channels. The bottleneck is half the block's output width, rounded
  down to groups of 128 channels. Transition shortcuts average-pool
  ``g(x) / beta`` (2x2, stride 2) and apply a 1x1 conv. Stage strides 1, 2, 2, 2;
- head: 1x1 conv to twice the last stage's width -> g -> global average pool
  -> dropout -> linear classifier initialised N(0, 0.01).

Beta and stochastic-depth bookkeeping come from ``nfresnet.layout.block_specs``,
shared with the NF-ResNets and NF-RegNets. The "+" variants ("F0+" ...) are the
reference's slightly wider models (stage widths 384, 768, 2048, 2048).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import haiku as hk
import jax

from nfresnet.activations import ActivationLike, scaled_activation
from nfresnet.blocks import NFBlock, call_block
from nfresnet.layout import BlockSpec, block_specs, check_choice, scale_width
from nfresnet.nf_regnet import expanded_width
from nfresnet.nf_resnet import CLASSIFIER_INIT, classifier_head
from nfresnet.ws_conv import WSConv2D

NFNET_STAGE_STRIDES = (1, 2, 2, 2)  # The 4-conv stem already downsamples by 4.
NFNET_WIDTHS = (256, 512, 1536, 1536)
NFNET_PLUS_WIDTHS = (384, 768, 2048, 2048)  # The reference's "F*+" variants.
STEM_WIDTHS = (16, 32, 64)  # Then half the first stage's base width (reference nfnet.py).
STEM_STRIDES = (2, 1, 1, 2)
FINAL_CONV_MULTIPLIER = 2  # Final 1x1 conv: twice the last stage's width.
BOTTLENECK_EXPANSION = 0.5  # Of the block's output width ("big width" in the reference).
GROUP_WIDTH = 128


@dataclasses.dataclass(frozen=True)
class NFNetVariant:
  """One row of the NFNet table (arXiv 2102.06171 Table 1; reference variant table).

  Attributes:
    widths: base stage widths, multiplied by the model's ``width``.
    depths: blocks per stage.
    train_resolution: training image size.
    test_resolution: evaluation image size.
    dropout_rate: dropout before the classifier.
    randaugment_layers: RandAugment ops per image in the reference recipe
      (``RA_level`` "405": 4 layers of magnitude 5; ``data.randaugment`` of the
      NFNet config, ``experiments.data.randaugment``).
    randaugment_magnitude: RandAugment magnitude in the reference recipe.
  """

  widths: tuple[int, int, int, int]
  depths: tuple[int, int, int, int]
  train_resolution: int
  test_resolution: int
  dropout_rate: float
  randaugment_layers: int
  randaugment_magnitude: int


_F_ROWS = {
  # name: (depths, train res, test res, dropout, RandAugment magnitude)
  "F0": ((1, 2, 6, 3), 192, 256, 0.2, 5),
  "F1": ((2, 4, 12, 6), 224, 320, 0.3, 10),
  "F2": ((3, 6, 18, 9), 256, 352, 0.4, 10),
  "F3": ((4, 8, 24, 12), 320, 416, 0.4, 15),
  "F4": ((5, 10, 30, 15), 384, 512, 0.5, 15),
  "F5": ((6, 12, 36, 18), 416, 544, 0.5, 15),
  "F6": ((7, 14, 42, 21), 448, 576, 0.5, 15),
  "F7": ((8, 16, 48, 24), 480, 608, 0.5, 15),
}
NFNET_VARIANTS: dict[str, NFNetVariant] = {
  f"{name}{suffix}": NFNetVariant(widths, depths, train, test, dropout, 4, magnitude)
  for suffix, widths in (("", NFNET_WIDTHS), ("+", NFNET_PLUS_WIDTHS))
  for name, (depths, train, test, dropout, magnitude) in _F_ROWS.items()
}
"""F0-F7 and the wider F0+ ... F7+ (same depths, resolutions and dropout)."""


class NFNetBlock(NFBlock):
  """NFNet bottleneck block: two grouped 3x3 convs and squeeze-excite on the output.

  ``NFBlock.__call__`` supplies ``g(x) / beta``, the shortcut (with
  ``avg_down=True``: 2x2 average pool then 1x1 conv on a transition), skip gain,
  alpha and stochastic depth; ``branch`` is
  ``conv0 (1x1) -> g -> conv1 (3x3, grouped, stride) -> g -> conv1b (3x3,
  grouped) -> g -> conv2 (1x1) -> SE``.

  Args:
    spec: the block's layout (channels, stride, beta, drop rate).
    expansion: bottleneck width relative to ``spec.out_channels``.
    group_width: channels per group of the 3x3 convs.
    **kwargs: forwarded to ``NFBlock`` (activation, alpha, skip_gain_init,
      use_se, se_ratio, avg_down, rescale_stochdepth, conv).
  """

  def __init__(
    self,
    spec: BlockSpec,
    *,
    expansion: float = BOTTLENECK_EXPANSION,
    group_width: int = GROUP_WIDTH,
    **kwargs,
  ):
    super().__init__(spec, **kwargs)
    self.expansion = expansion
    self.group_width = group_width

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    width, groups = expanded_width(self.spec.out_channels, self.expansion, self.group_width)
    out = self.conv(width, 1, name="conv0")(x)
    out = self.conv(width, 3, stride=self.spec.stride, feature_group_count=groups, name="conv1")(
      self.activation(out)
    )
    out = self.conv(width, 3, feature_group_count=groups, name="conv1b")(self.activation(out))
    out = self.conv(self.spec.out_channels, 1, name="conv2")(self.activation(out))
    return self.squeeze_excite(out)


def nfnet_specs(
  variant: str, *, width: float = 1.0, alpha: float = 0.2, stochdepth_rate: float = 0.0
) -> tuple[tuple[int, ...], list[BlockSpec]]:
  """Stem widths and block specs of an NFNet variant."""
  check_choice("variant", variant, tuple(NFNET_VARIANTS))
  row = NFNET_VARIANTS[variant]
  stem_widths = STEM_WIDTHS + (row.widths[0] // 2,)
  widths = [scale_width(c, width) for c in row.widths]
  specs = block_specs(
    row.depths,
    widths,
    NFNET_STAGE_STRIDES,
    stem_widths[-1],
    alpha=alpha,
    stochdepth_rate=stochdepth_rate,
  )
  return stem_widths, specs


class NFNet(hk.Module):
  """Normalizer-free network of arXiv 2102.06171, variants F0-F7 (and F0+ ... F7+).

  With default arguments and ``num_classes=1000`` the layer list mirrors the
  reference NFNets, so parameter counts equal the reference's (F0: 71,489,284).

  Args:
    num_classes: classifier outputs.
    variant: "F0" to "F7" or "F0+" to "F7+" (``NFNET_VARIANTS``).
    width: multiplies the stage widths (not the stem's, as in the reference).
    group_width: channels per group in the 3x3 convs (128 in the paper).
    se_ratio: squeeze-excite hidden width as a fraction of the block's output width.
    alpha: residual scale; variance grows by ``alpha**2`` per block.
    activation: registered name or callable; scaled by its gamma. "gelu" is the
      exact (erf) GELU, as in timm's ``dm_nfnet_*``; the authors' code uses
      ``jax.nn.gelu``'s tanh approximation, "gelu_tanh".
    stochdepth_rate: final drop rate of the linear stochastic-depth schedule
      (0.25 in the paper's recipe).
    dropout_rate: dropout before the classifier; None takes the variant's.
    skip_gain_init: initial value of each block's scalar skip gain (1 for SPPs).
    reference_gammas: use the reference code's hard-coded gammas (the released
      NFNet weights were trained with them).
    remat: recompute each block's activations in the backward pass
      (``nfresnet.blocks.call_block``); same parameters and numerics.
    name: module name.
  """

  def __init__(
    self,
    num_classes: int,
    variant: str = "F0",
    *,
    width: float = 1.0,
    group_width: int = GROUP_WIDTH,
    se_ratio: float = 0.5,
    alpha: float = 0.2,
    activation: ActivationLike = "gelu",
    stochdepth_rate: float = 0.25,
    dropout_rate: float | None = None,
    skip_gain_init: float = 0.0,
    reference_gammas: bool = False,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name or "nfnet")
    self.stem_widths, self.specs = nfnet_specs(
      variant, width=width, alpha=alpha, stochdepth_rate=stochdepth_rate
    )
    row = NFNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.variant = variant
    self.train_resolution = row.train_resolution
    self.test_resolution = row.test_resolution
    self.dropout_rate = row.dropout_rate if dropout_rate is None else dropout_rate
    self.head_width = FINAL_CONV_MULTIPLIER * self.specs[-1].out_channels
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

  @hk.transparent
  def stem(self, x: jax.Array) -> jax.Array:
    """The four-conv stem; no activation after its last conv (every block pre-activates)."""
    for i, (channels, stride) in enumerate(zip(self.stem_widths, STEM_STRIDES, strict=True)):
      if i:
        x = self.activation(x)
      x = WSConv2D(channels, 3, stride=stride, name=f"stem_conv{i}")(x)
    return x

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    h = self.stem(x)
    for spec in self.specs:
      block = NFNetBlock(spec, group_width=self.group_width, **self.block_kwargs)
      h = call_block(block, h, is_training, self.remat)
    h = self.activation(WSConv2D(self.head_width, 1, name="final_conv")(h))
    return classifier_head(h, self.num_classes, self.dropout_rate, is_training, CLASSIFIER_INIT)
