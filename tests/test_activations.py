"""Gamma-scaled activations (paper Section 4, "Determining nonlinearity-specific constants")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf

NAMES = sorted(nf.ACTIVATIONS)
# Exact gammas (quadrature, 6 decimals); the reference implementation's Monte Carlo
# constants (nf.REFERENCE_GAMMAS) sit 0.03-0.08% above them.
EXACT_GAMMAS = {
  "relu": 1.712859,
  "silu": 1.787187,
  "gelu": 1.700926,
  "tanh": 1.592537,
  "elu": 1.270843,
  "softplus": 1.919126,
  "sigmoid": 4.801313,
}


def test_relu_gamma_closed_form():
  expected = np.sqrt(2.0 / (1.0 - 1.0 / np.pi))
  assert nf.gamma("relu") == pytest.approx(expected, rel=1e-6)


def test_relu_and_silu_moments():
  mean, var = nf.gaussian_moments("relu")
  assert mean == pytest.approx(0.398942, abs=1e-6)
  assert var == pytest.approx(0.340845, abs=1e-6)
  mean, var = nf.gaussian_moments("silu")
  assert mean == pytest.approx(0.206621, abs=1e-6)
  assert var == pytest.approx(0.313083, abs=1e-6)


@pytest.mark.parametrize("name", sorted(EXACT_GAMMAS))
def test_exact_gammas(name):
  assert nf.gamma(name) == pytest.approx(EXACT_GAMMAS[name], abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_scaled_activation_has_unit_variance_by_quadrature(name):
  _, var = nf.gaussian_moments(nf.scaled_activation(name))
  assert var == pytest.approx(1.0, abs=1e-5)


def test_scaled_activations_have_unit_variance_on_samples():
  x = jax.random.normal(jax.random.key(0), (2_000_000,))
  for name in NAMES:
    sample_var = float(jnp.var(nf.scaled_activation(name)(x)))
    # Monte Carlo error of a variance estimate from 2e6 samples is ~0.1-0.3%.
    assert sample_var == pytest.approx(1.0, rel=0.01), name


@pytest.mark.parametrize("name", NAMES)
def test_reference_constants_within_point_one_percent(name):
  assert nf.gamma(name, reference=True) == pytest.approx(nf.gamma(name), rel=1e-3)


def test_swish_is_silu():
  assert nf.gamma("swish") == nf.gamma("silu")


def test_callable_activation_gamma():
  assert nf.gamma(lambda x: 2.0 * x) == pytest.approx(0.5, rel=1e-9)
  assert nf.gamma("identity") == pytest.approx(1.0, rel=1e-9)


def test_unknown_name_lists_allowed_names():
  with pytest.raises(ValueError, match="unknown activation 'rellu'.*relu.*silu"):
    nf.gamma("rellu")
  with pytest.raises(ValueError, match="no reference gamma"):
    nf.gamma(jax.nn.relu, reference=True)


def test_register_activation():
  name = "test_cube_root"
  try:
    nf.register_activation(name, jnp.cbrt)
    _, var = nf.gaussian_moments(nf.scaled_activation(name))
    assert var == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="already registered"):
      nf.register_activation(name, jnp.cbrt)
  finally:
    nf.ACTIVATIONS.pop(name, None)


def test_scaled_activation_keeps_dtype():
  x = jnp.ones((4,), jnp.bfloat16)
  assert nf.scaled_activation("relu")(x).dtype == jnp.bfloat16
