"""Tests for nfresnet.weights_timm: timm checkpoints reproduce timm's logits; its conventions.

Fixtures (committed, written without the internet):
``tests/fixtures/timm/{nf_resnet50,dm_nfnet_f0}.safetensors``: shrunken timm models with
random weights and their logits, from ``benchmarks/make_timm_fixtures.py`` (timm 1.0.31,
torch 2.13.0+cpu; timm names ``nf_resnet50`` and ``dm_nfnet_f0``). Logits are compared by
``max |ours - theirs| / max |theirs|``.
"""

import json

import numpy as np
import pytest
from weights_helpers import TOLERANCE, logits_of, read_timm_fixture, relative_error

from nfresnet import weights


@pytest.mark.parametrize(
  "name,reference_gammas",
  [("nf_resnet50", False), ("dm_nfnet_f0", False), ("dm_nfnet_f0", True)],
)
def test_timm_checkpoint_reproduces_timm_logits(name, reference_gammas):
  tensors, metadata, x, want = read_timm_fixture(name)
  assert metadata["timm_model"] == name and metadata["timm_version"] == "1.0.31"
  params = weights.timm_to_params(tensors, reference_gammas=reference_gammas)
  kwargs = {**json.loads(metadata["model_kwargs"]), "reference_gammas": reference_gammas}
  got = logits_of(metadata["model_name"], kwargs, params, x)
  assert relative_error(got, want) < TOLERANCE
  assert np.abs(want).max() > 0.3  # Random classifier of order 1: not a trivial match.


def test_timm_conventions():
  """OIHW -> HWIO, (out, in) -> (in, out), skip gains, no change of the raw kernels."""
  tensors, *_ = read_timm_fixture("dm_nfnet_f0")
  params = weights.timm_to_params(tensors, reference_gammas=True)
  kernel = tensors["stages.2.1.conv2.weight"]  # O, I / groups, H, W.
  np.testing.assert_array_equal(
    params["nfnet/stage3_block2/conv1"]["w"], kernel.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(params["nfnet/classifier"]["w"], tensors["head.fc.weight"].T)
  assert params["nfnet/stage3_block2"]["skip_gain"] == tensors["stages.2.1.skipinit_gain"]
  se = params["nfnet/stage1_block1/squeeze_excite/linear0"]["w"]
  np.testing.assert_array_equal(se, tensors["stages.0.0.attn_last.fc1.weight"][:, :, 0, 0].T)
  # The gain absorbs timm's epsilon (1e-5 added to the variance) exactly.
  w = kernel.astype(np.float64)
  fan_in = np.prod(w.shape[1:])
  var = w.reshape(w.shape[0], -1).var(axis=1)
  ratio = np.sqrt(np.maximum(fan_in * var, 1e-4) / (fan_in * (var + 1e-5)))
  gain = tensors["stages.2.1.conv2.gain"].reshape(-1) * ratio
  np.testing.assert_allclose(params["nfnet/stage3_block2/conv1"]["gain"], gain, rtol=1e-6)
  resnet, *_ = read_timm_fixture("nf_resnet50")
  resnet_params = weights.timm_to_params(resnet)
  assert all(resnet_params[f"nf_resnet/stage{s}_block1"]["skip_gain"] == 1.0 for s in (1, 4))
