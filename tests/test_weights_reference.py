"""Tests for nfresnet.weights_reference: the authors' NFNet file reproduces their logits.

Fixtures (committed, written without the internet):
``tests/fixtures/reference/nfnet_f0_tiny.{pkl,logits.npz}``: the authors' own NFNet
(deepmind-research ``nfnets/nfnet.py``) at F0 width 1/16, random weights and its logits,
from ``benchmarks/make_reference_fixtures.py``. Logits are compared by
``max |ours - theirs| / max |theirs|``.
"""

import pickle

import numpy as np
from weights_helpers import FIXTURES, TOLERANCE, assert_same, logits_of, relative_error

from nfresnet import weights

REFERENCE = FIXTURES / "reference" / "nfnet_f0_tiny"


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
