"""Tests for nfresnet.safe_pickle: Haiku mappings and dill arrays load; code is refused, never run.

The tests read through ``nfresnet.weights`` (``load_params``, ``restricted_load``), as
parameter files are read.
"""

import io
import os
import pathlib
import pickle

import numpy as np
import pytest

from nfresnet import weights


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
