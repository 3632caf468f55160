"""Variant table and beta bookkeeping (paper Section 4)."""

import numpy as np
import pytest

import nfresnet as nf
from nfresnet.layout import RESNET_DEPTHS, stage_ends

# beta^2 for depths [3, 4, 6, 3] and alpha = 0.2 (paper Section 4).
RESNET50_BETA_SQUARED = [
    1.00, 1.04, 1.08,
    1.12, 1.04, 1.08, 1.12,
    1.16, 1.04, 1.08, 1.12, 1.16, 1.20,
    1.24, 1.04, 1.08,
]  # fmt: skip


def test_beta_sequence_resnet50():
  _, _, specs = nf.resnet_specs(50)
  np.testing.assert_allclose([s.beta**2 for s in specs], RESNET50_BETA_SQUARED, atol=1e-12)
  inputs, _ = nf.expected_variances([3, 4, 6, 3], 0.2)
  np.testing.assert_allclose(inputs, RESNET50_BETA_SQUARED, atol=1e-12)


def test_expected_output_variance_resets_at_transitions():
  _, outputs = nf.expected_variances([2, 3], 0.5)
  np.testing.assert_allclose(outputs, [1.25, 1.5, 1.25, 1.5, 1.75])


def test_stochastic_depth_schedule_is_linear_in_block_index():
  _, _, specs = nf.resnet_specs(50, stochdepth_rate=0.1)
  np.testing.assert_allclose([s.stochdepth_rate for s in specs], 0.1 * np.arange(16) / 16)


@pytest.mark.parametrize("depth", sorted(RESNET_DEPTHS))
def test_stage_layout(depth):
  stage_depths, block_type = RESNET_DEPTHS[depth]
  kind, stem_width, specs = nf.resnet_specs(depth)
  assert kind == block_type and stem_width == 64
  assert len(specs) == sum(stage_depths)
  assert stage_ends(specs) == list(np.cumsum(stage_depths) - 1)
  assert [s.stride for s in specs if s.transition] == [1, 2, 2, 2]
  convs_per_block = 2 if kind == "basic" else 3
  # Depth counts the stem, the branch convs and the classifier; 288 and 600 are the
  # paper's nominal names for [24] * 4 and [50] * 4 bottleneck stages (290 and 602 layers).
  if depth not in (288, 600):
    assert 2 + convs_per_block * len(specs) == depth


def test_projection_only_where_shape_changes():
  _, _, specs = nf.resnet_specs(50)
  assert [s.use_projection for s in specs] == [s.transition for s in specs]
  _, _, specs = nf.resnet_specs(18)
  # ResNet-18 stage 1 keeps 64 channels at stride 1: identity shortcut, but the
  # variance is still reset there (first block of a stage).
  assert not specs[0].use_projection and specs[0].transition
  assert [s.use_projection for s in specs[2::2]] == [True, True, True]


def test_width_scales_every_channel_count():
  _, stem, specs = nf.resnet_specs(50, width=0.25)
  assert stem == 16
  assert sorted({s.out_channels for s in specs}) == [64, 128, 256, 512]


def test_unknown_depth_lists_allowed():
  with pytest.raises(ValueError, match="unknown depth 51; allowed: 18, 26, 34, 50"):
    nf.resnet_specs(51)
