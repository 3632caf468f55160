"""ResNet variant table and the NF variance bookkeeping (paper Section 4).

Every residual model in the library (NF-ResNets, the baselines, NF-RegNets) is
laid out from ``BlockSpec`` lists built here, so the beta values that the model
uses and the analytic signal-propagation curve come from one function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# depth -> (blocks per stage, block type), as in the reference implementation (docs/paper_map.md).
RESNET_DEPTHS: dict[int, tuple[tuple[int, ...], str]] = {
  18: ((2, 2, 2, 2), "basic"),
  26: ((2, 2, 2, 2), "bottleneck"),
  34: ((3, 4, 6, 3), "basic"),
  50: ((3, 4, 6, 3), "bottleneck"),
  101: ((3, 4, 23, 3), "bottleneck"),
  152: ((3, 8, 36, 3), "bottleneck"),
  200: ((3, 24, 36, 3), "bottleneck"),
  288: ((24, 24, 24, 24), "bottleneck"),
  600: ((50, 50, 50, 50), "bottleneck"),
}
STAGE_WIDTHS = {"bottleneck": (256, 512, 1024, 2048), "basic": (64, 128, 256, 512)}
STAGE_STRIDES = (1, 2, 2, 2)
STEM_WIDTH = 64
BOTTLENECK_EXPANSION = 4
STEMS = ("imagenet", "imagenet_no_pool", "cifar")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Static description of one residual block.

  Attributes:
    name: stable Haiku module name, ``stage{s}_block{b}`` (1-based).
    stage: 0-based stage index.
    index: 0-based index of the block in the whole network.
    in_channels: channels entering the block.
    out_channels: channels leaving the block.
    stride: spatial stride of the block.
    transition: first block of a stage (its expected variance is reset).
    use_projection: shortcut is a conv (stride > 1 or channel change).
    beta: ``sqrt`` of the expected variance of the block's input.
    expected_var: analytic variance of the block's output.
    stochdepth_rate: drop probability of this block's branch.
  """

  name: str
  stage: int
  index: int
  in_channels: int
  out_channels: int
  stride: int
  transition: bool
  use_projection: bool
  beta: float
  expected_var: float
  stochdepth_rate: float


def check_choice(kind: str, value, allowed) -> None:
  """Raises ``ValueError`` naming ``value`` and the allowed values."""
  if value not in allowed:
    raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(map(str, allowed))}")


def scale_width(channels: int, width: float) -> int:
  """Channel count multiplied by ``width`` (at least 1)."""
  return max(1, int(channels * width))


def expected_variances(stage_depths: Sequence[int], alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Analytic input and output variances of every block (paper Section 4).

  ``expected_var`` starts at 1; the first block of every stage resets it to 1
  before adding ``alpha**2``; every other block adds ``alpha**2``.

  Args:
    stage_depths: number of blocks in each stage.
    alpha: the residual scale.

  Returns:
    ``(input_var, output_var)``, one entry per block; ``beta = sqrt(input_var)``.
  """
  inputs, outputs = [], []
  var = 1.0
  for depth in stage_depths:
    for block in range(depth):
      inputs.append(var)
      if block == 0:
        var = 1.0
      var += alpha**2
      outputs.append(var)
  return np.asarray(inputs), np.asarray(outputs)


def block_specs(
  stage_depths: Sequence[int],
  stage_widths: Sequence[int],
  stage_strides: Sequence[int],
  in_channels: int,
  *,
  alpha: float = 0.2,
  stochdepth_rate: float = 0.0,
) -> list[BlockSpec]:
  """Per-block specs; block ``i`` of ``n`` drops with rate ``stochdepth_rate * i / n``."""
  input_var, output_var = expected_variances(stage_depths, alpha)
  num_blocks = sum(stage_depths)
  specs, index = [], 0
  for stage, (depth, width, stride) in enumerate(
    zip(stage_depths, stage_widths, stage_strides, strict=False)
  ):
    for block in range(depth):
      block_stride = stride if block == 0 else 1
      specs.append(
        BlockSpec(
          name=f"stage{stage + 1}_block{block + 1}",
          stage=stage,
          index=index,
          in_channels=in_channels,
          out_channels=width,
          stride=block_stride,
          transition=block == 0,
          use_projection=block_stride > 1 or in_channels != width,
          beta=float(np.sqrt(input_var[index])),
          expected_var=float(output_var[index]),
          stochdepth_rate=stochdepth_rate * index / num_blocks,
        )
      )
      in_channels = width
      index += 1
  return specs


def resnet_specs(
  depth: int, *, width: float = 1.0, alpha: float = 0.2, stochdepth_rate: float = 0.0
) -> tuple[str, int, list[BlockSpec]]:
  """Block type, stem width and block specs of a ResNet of ``depth``."""
  check_choice("depth", depth, tuple(RESNET_DEPTHS))
  stage_depths, block_type = RESNET_DEPTHS[depth]
  widths = [scale_width(c, width) for c in STAGE_WIDTHS[block_type]]
  stem_width = scale_width(STEM_WIDTH, width)
  specs = block_specs(
    stage_depths,
    widths,
    STAGE_STRIDES,
    stem_width,
    alpha=alpha,
    stochdepth_rate=stochdepth_rate,
  )
  return block_type, stem_width, specs


def stage_ends(specs: Sequence[BlockSpec]) -> list[int]:
  """Indices of the last block of every stage."""
  return [
    s.index
    for s, nxt in zip(specs, list(specs[1:]) + [None], strict=False)
    if nxt is None or nxt.stage != s.stage
  ]
