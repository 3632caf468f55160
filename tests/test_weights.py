"""Tests for nfresnet.weights: our own files round-trip; misfits and unsupported files are one line.

Parameter trees come from the timm fixture ``dm_nfnet_f0`` (``tests/test_weights_timm.py``).
"""

import haiku as hk
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file
from weights_helpers import assert_same, read_timm_fixture

from nfresnet import NFNet, NFResNet, weights


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_export_import_round_trip_is_identical(tmp_path, suffix):
  tensors, *_ = read_timm_fixture("dm_nfnet_f0")
  params = weights.timm_to_params(tensors)
  path = tmp_path / f"exported{suffix}"
  weights.export_params(params, path)
  loaded = weights.load_params(path, reference_gammas=True)  # Our files are never rescaled.
  assert_same(loaded, params)
  assert loaded["nfnet/stage1_block1"]["skip_gain"].shape == ()


def test_wrong_width_or_model_is_one_line_naming_the_parameter_and_shapes():
  tensors, *_ = read_timm_fixture("dm_nfnet_f0")
  params = weights.timm_to_params(tensors)

  def expected(cls, **kwargs):
    fn = hk.transform(lambda x: cls(10, **kwargs)(x, is_training=False))
    return jax.eval_shape(fn.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))

  wider = expected(NFNet, variant="F0", width=0.125, group_width=8)
  with pytest.raises(ValueError) as error:
    weights.check_params(params, wider)
  message = str(error.value)
  assert message == (
    "checkpoint does not fit the model: nfnet/classifier/w has shape (192, 10) in the "
    "checkpoint, (384, 10) in the model"
  )
  with pytest.raises(ValueError, match="it holds nfnet parameters, the model is nf_resnet"):
    weights.check_params(params, expected(NFResNet, depth=50, width=0.0625))
  deeper = expected(NFNet, variant="F1", width=0.0625, group_width=8)
  with pytest.raises(ValueError, match="it lacks nfnet/stage1_block2/conv0/bias") as error:
    weights.check_params(params, deeper)
  assert "\n" not in str(error.value)


def test_unsupported_files_are_one_line_errors(tmp_path):
  tensors, *_ = read_timm_fixture("dm_nfnet_f0")
  no_skip = {k: v for k, v in tensors.items() if not k.endswith("skipinit_gain")}
  save_file(no_skip, str(tmp_path / "nfnet_l0.safetensors"))  # Like timm's nfnet_* models.
  with pytest.raises(ValueError, match="not a timm nf_resnet\\* or dm_nfnet_\\* checkpoint"):
    weights.load_params(tmp_path / "nfnet_l0.safetensors")
  (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
  with pytest.raises(ValueError, match="is not a parameter file"):
    weights.load_params(tmp_path / "image.png")
  np.savez(tmp_path / "other.npz", x=np.zeros(2))
  with pytest.raises(ValueError, match="neither our export nor an authors' NFNet"):
    weights.load_params(tmp_path / "other.npz")
