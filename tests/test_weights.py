"""Tests for nfresnet.weights: timm and authors' checkpoints reproduce their logits, round trips,
the restricted unpickler, and one-line errors for checkpoints that do not fit.

Fixtures (committed, written without the internet):
- ``tests/fixtures/timm/{nf_resnet50,dm_nfnet_f0}.safetensors``: shrunken timm models with
  random weights and their logits, from ``benchmarks/make_timm_fixtures.py`` (timm
  1.0.31, torch 2.13.0+cpu; timm names ``nf_resnet50`` and ``dm_nfnet_f0``);
- ``tests/fixtures/reference/nfnet_f0_tiny.{pkl,logits.npz}``: the authors' own NFNet
  (deepmind-research ``nfnets/nfnet.py``) at F0 width 1/16, random weights and its
  logits, from ``benchmarks/make_reference_fixtures.py``.
Logits are compared by ``max |ours - theirs| / max |theirs|``.
"""

import functools
import io
import json
import os
import pathlib
import pickle

import haiku as hk
import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from nfresnet import NFNet, NFResNet, weights

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TIMM_FIXTURES = ("nf_resnet50", "dm_nfnet_f0")
REFERENCE = FIXTURES / "reference" / "nfnet_f0_tiny"
MODELS = {"nf_resnet": NFResNet, "nfnet": NFNet}
TOLERANCE = 1e-4  # Relative to the largest logit; measured: 1e-6 to 3e-6.
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # Compilation dominates on CPU.


def read_timm_fixture(name: str) -> tuple[dict, dict, np.ndarray, np.ndarray]:
  """(timm state dict, metadata, NHWC input, timm logits)."""
  with safe_open(str(FIXTURES / "timm" / f"{name}.safetensors"), framework="numpy") as f:
    metadata = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  return tensors, metadata, tensors.pop("fixture.input"), tensors.pop("fixture.logits")


@functools.cache
def model(model_name: str, kwargs_json: str):
  """(transformed model, jitted apply) for 10 classes; cached so tests share compilations."""
  kwargs = json.loads(kwargs_json)
  fn = hk.transform(lambda x: MODELS[model_name](10, **kwargs)(x, is_training=False))
  return fn, jax.jit(fn.apply, compiler_options=FAST_COMPILE)


def logits_of(model_name: str, kwargs: dict, params: dict, x: np.ndarray) -> np.ndarray:
  fn, apply = model(model_name, json.dumps(kwargs, sort_keys=True))
  weights.check_params(params, jax.eval_shape(fn.init, jax.random.key(0), x))
  return np.asarray(apply(params, None, x))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  return float(np.abs(got - want).max() / np.abs(want).max())


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


def test_authors_nfnet_file_reproduces_their_logits(tmp_path):
  """Their pickle, and the same tree as a flattened npz (``utils.flatten_haiku_tree`` keys)."""
  reference = np.load(f"{REFERENCE}.logits.npz")
  params = weights.load_params(f"{REFERENCE}.pkl", reference_gammas=True)
  kwargs = dict(variant="F0", width=0.0625, group_width=8, activation="gelu_tanh")
  got = logits_of("nfnet", {**kwargs, "reference_gammas": True}, params, reference["input"])
  assert relative_error(got, reference["logits"]) < TOLERANCE
  with open(f"{REFERENCE}.pkl", "rb") as f:
    tree = pickle.load(f)  # Our own fixture: safe to unpickle here.
  flat = {
    f"{m.replace('/~/', '.').replace('/', '.')}.{n}": v
    for m, leaves in tree.items()
    for n, v in leaves.items()
  }
  np.savez(tmp_path / "F0_flat.npz", **flat)
  from_npz = weights.load_params(tmp_path / "F0_flat.npz", reference_gammas=True)
  assert_same(from_npz, params)


def test_authors_gelu_is_the_tanh_approximation():
  """With exact GELU the same weights are close but measurably off (2.9e-4 here)."""
  reference = np.load(f"{REFERENCE}.logits.npz")
  params = weights.load_params(f"{REFERENCE}.pkl", reference_gammas=True, activation="gelu")
  kwargs = dict(variant="F0", width=0.0625, group_width=8, reference_gammas=True)
  error = relative_error(
    logits_of("nfnet", kwargs, params, reference["input"]), reference["logits"]
  )
  assert 1e-4 < error < 1e-3


def flat_mapping_pickle(tree: dict) -> bytes:
  """A pickle of ``haiku._src.data_structures.FlatMapping(tree)``, as 2021 Haiku wrote it."""
  payload = pickle.dumps(tree, protocol=2)[2:-1]  # Without PROTO and STOP.
  return b"\x80\x02chaiku._src.data_structures\nFlatMapping\n" + payload + b"\x85R."


def test_haiku_flat_mappings_load_as_plain_dicts(tmp_path):
  tree = {"NFNet/~/linear": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}}
  path = tmp_path / "F0_haiku.npz"  # The authors' files are pickles despite the suffix.
  path.write_bytes(flat_mapping_pickle(tree))
  params = weights.load_params(path, reference_gammas=True)
  assert list(params) == ["nfnet/classifier"]
  np.testing.assert_array_equal(params["nfnet/classifier"]["w"], tree["NFNet/~/linear"]["w"])


def _create_array(f, args, state, npdict=None):
  """Pickled under dill's name below; never called by the restricted loader."""
  raise AssertionError("the loader must use its own stand-in")


class DillArray:
  """Pickles an array the way dill does: ``dill._dill._create_array(f, args, state, None)``."""

  def __init__(self, array: np.ndarray):
    self.array = array

  def __reduce__(self):
    return _create_array, (*self.array.__reduce__(), None)


def test_dill_array_records_rebuild_plain_arrays():
  w = np.arange(6, dtype=np.float32).reshape(3, 2)
  data = pickle.dumps({"NFNet/~/linear": {"w": DillArray(w)}}, protocol=2)
  ours = f"c{_create_array.__module__}\n_create_array\n".encode()
  assert data.count(ours) == 1
  tree = weights.restricted_load(io.BytesIO(data.replace(ours, b"cdill._dill\n_create_array\n")))
  np.testing.assert_array_equal(tree["NFNet/~/linear"]["w"], w)


def assert_same(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for module in a:
    assert sorted(a[module]) == sorted(b[module]), module
    for name in a[module]:
      x, y = np.asarray(a[module][name]), np.asarray(b[module][name])
      assert x.dtype == y.dtype and x.shape == y.shape, (module, name)
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_export_import_round_trip_is_identical(tmp_path, suffix):
  tensors, *_ = read_timm_fixture("dm_nfnet_f0")
  params = weights.timm_to_params(tensors)
  path = tmp_path / f"exported{suffix}"
  weights.export_params(params, path)
  loaded = weights.load_params(path, reference_gammas=True)  # Our files are never rescaled.
  assert_same(loaded, params)
  assert loaded["nfnet/stage1_block1"]["skip_gain"].shape == ()


class RunsCode:
  """Unpickling this would run ``os.system``."""

  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["evil.pkl", "evil.npz"])
def test_restricted_loader_refuses_code_and_never_runs_it(tmp_path, name):
  marker = tmp_path / "ran"
  path = tmp_path / name
  path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": RunsCode(marker)}}))
  with pytest.raises(ValueError, match=r"refusing to unpickle global (posix|os)\.system") as error:
    weights.load_params(path)
  assert "\n" not in str(error.value)
  assert not marker.exists()
  eval_pickle = b"\x80\x04cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R."
  with pytest.raises(ValueError, match="refusing to unpickle global builtins.eval"):
    weights.restricted_load(io.BytesIO(eval_pickle))


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
