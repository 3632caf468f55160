"""nfresnet: Normalizer-Free ResNets in JAX/Haiku (Brock, De & Smith, ICLR 2021)."""

from nfresnet.activations import (
  ACTIVATIONS,
  REFERENCE_GAMMAS,
  gamma,
  gaussian_moments,
  get_activation,
  register_activation,
  scaled_activation,
)
from nfresnet.baselines import BNBlock, FixupBlock, FixupResNet, ResNetV2, SkipInitResNet
from nfresnet.blocks import (
  NFBasicBlock,
  NFBlock,
  NFBottleneckBlock,
  ResidualBlock,
  SqueezeExcite,
  stochastic_depth,
)
from nfresnet.bn_regnet import BNRegNet, BNRegNetBlock
from nfresnet.counting import count_macs, count_params
from nfresnet.freeze import fold_batchnorm, folded_batchnorm, freeze, frozen
from nfresnet.layout import BlockSpec, block_specs, expected_variances, resnet_specs
from nfresnet.mean_field import mean_field_signal_variance
from nfresnet.nf_regnet import NF_REGNET_VARIANTS, NFRegNet, NFRegNetBlock
from nfresnet.nf_resnet import NFResNet
from nfresnet.nfnet import NFNET_VARIANTS, NFNet, NFNetBlock
from nfresnet.signal_propagation import (
  channel_statistics,
  draw_params,
  expected_signal_variance,
  signal_propagation,
)
from nfresnet.stacking import is_stacked_module, stack_params, stacked_blocks, unstack_params
from nfresnet.ws_conv import Conv2D, WSConv2D, standardize_kernel

__version__ = "0.1.0"

__all__ = [
  "ACTIVATIONS",
  "REFERENCE_GAMMAS",
  "BNBlock",
  "BNRegNet",
  "BNRegNetBlock",
  "BlockSpec",
  "FixupBlock",
  "FixupResNet",
  "ResNetV2",
  "SkipInitResNet",
  "Conv2D",
  "NFBasicBlock",
  "NFBlock",
  "NFBottleneckBlock",
  "NFRegNet",
  "NFRegNetBlock",
  "NF_REGNET_VARIANTS",
  "NFResNet",
  "NFNet",
  "NFNetBlock",
  "NFNET_VARIANTS",
  "ResidualBlock",
  "SqueezeExcite",
  "WSConv2D",
  "block_specs",
  "channel_statistics",
  "count_macs",
  "count_params",
  "fold_batchnorm",
  "folded_batchnorm",
  "freeze",
  "frozen",
  "is_stacked_module",
  "stack_params",
  "stacked_blocks",
  "unstack_params",
  "draw_params",
  "expected_signal_variance",
  "expected_variances",
  "gamma",
  "gaussian_moments",
  "mean_field_signal_variance",
  "get_activation",
  "register_activation",
  "resnet_specs",
  "scaled_activation",
  "signal_propagation",
  "standardize_kernel",
  "stochastic_depth",
]
