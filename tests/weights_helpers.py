"""Helpers shared by the parameter-file tests: fixture paths, timm fixtures, models, comparisons.

``tests/fixtures/timm/<name>.safetensors`` hold a timm state dict plus ``fixture.input`` and
``fixture.logits`` (see ``tests/test_weights_timm.py``). Logits are compared by
``max |ours - theirs| / max |theirs|`` (``relative_error``).
"""

import functools
import json
import pathlib

import haiku as hk
import jax
import numpy as np
from safetensors import safe_open

from nfresnet import NFNet, NFResNet, weights

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TIMM_FIXTURES = ("nf_resnet50", "dm_nfnet_f0")
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


def assert_same(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for module in a:
    assert sorted(a[module]) == sorted(b[module]), module
    for name in a[module]:
      x, y = np.asarray(a[module][name]), np.asarray(b[module][name])
      assert x.dtype == y.dtype and x.shape == y.shape, (module, name)
      np.testing.assert_array_equal(x, y)
