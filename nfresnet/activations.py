"""Gamma-scaled nonlinearities (paper Section 4, "Determining nonlinearity-specific constants").

For a nonlinearity ``g`` the paper defines ``gamma_g = 1 / sqrt(Var[g(x)])`` with
``x ~ N(0, 1)``, so that ``gamma_g * g(x)`` has unit variance for unit-Gaussian
inputs. We compute gamma by composite Gauss-Legendre quadrature of the Gaussian
density in float64 (panels of width 1/4 on [-12, 12], so kinks at multiples of
1/4 such as ReLU's at 0 and ReLU6's at 6 fall on panel edges and the rule is
exact for them up to rounding). The Monte Carlo constants hard-coded in the
reference implementation are kept in ``REFERENCE_GAMMAS`` for exact
reproduction of its numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]
ActivationLike = str | Activation


def _identity(x: jax.Array) -> jax.Array:
  return x


def _gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU; the exact gamma 1.700926 (tests/test_activations.py) is for this form."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: jax.Array) -> jax.Array:
  """Tanh-approximate GELU, ``jax.nn.gelu``'s default: the reference NFNets' "gelu"."""
  return jax.nn.gelu(x, approximate=True)


# Explicit registry of named nonlinearities.
ACTIVATIONS: dict[str, Activation] = {
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "gelu": _gelu,
  "gelu_tanh": _gelu_tanh,
  "elu": jax.nn.elu,
  "celu": jax.nn.celu,
  "selu": jax.nn.selu,
  "leaky_relu": jax.nn.leaky_relu,
  "relu6": jax.nn.relu6,
  "tanh": jnp.tanh,
  "sigmoid": jax.nn.sigmoid,
  "softplus": jax.nn.softplus,
  "soft_sign": jax.nn.soft_sign,
  "log_sigmoid": jax.nn.log_sigmoid,
  "identity": _identity,
}

# Single Monte Carlo estimates hard-coded by the reference implementation (docs/paper_map.md).
# They sit 0.03-0.08% above the exact values; use them only to reproduce it.
REFERENCE_GAMMAS: Mapping[str, float] = {
  "relu": 1.7139588594436646,
  "silu": 1.7881293296813965,
  "swish": 1.7881293296813965,
  "gelu": 1.7015043497085571,
  "gelu_tanh": 1.7015043497085571,  # The same constant: the reference's gelu is this one.
  "elu": 1.2716004848480225,
  "celu": 1.270926833152771,
  "selu": 1.0008515119552612,
  "leaky_relu": 1.70590341091156,
  "relu6": 1.7131484746932983,
  "tanh": 1.5939117670059204,
  "sigmoid": 4.803835391998291,
  "softplus": 1.9203323125839233,
  "soft_sign": 2.338853120803833,
  "log_sigmoid": 1.9193484783172607,
  "identity": 1.0,
}

_PANEL_WIDTH = 0.25
_HALF_RANGE = 12.0
_NODES_PER_PANEL = 16


def register_activation(name: str, fn: Activation) -> None:
  """Adds ``fn`` to the named registry; its gamma is computed on first use.

  Args:
    name: the new name. Existing names cannot be overwritten.
    fn: an elementwise jax function.
  """
  if name in ACTIVATIONS:
    raise ValueError(f"activation {name!r} is already registered")
  ACTIVATIONS[name] = fn


def get_activation(activation: ActivationLike) -> Activation:
  """Resolves a registered name or returns a callable unchanged."""
  if callable(activation):
    return activation
  if activation not in ACTIVATIONS:
    raise ValueError(
      f"unknown activation {activation!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
    )
  return ACTIVATIONS[activation]


@functools.lru_cache(maxsize=1)
def _quadrature_rule() -> tuple[np.ndarray, np.ndarray]:
  """Nodes and weights integrating f(x) * N(x; 0, 1) over [-12, 12]."""
  nodes, weights = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
  edges = np.arange(-_HALF_RANGE, _HALF_RANGE, _PANEL_WIDTH)
  half = _PANEL_WIDTH / 2
  x = (edges[:, None] + half + half * nodes[None, :]).ravel()
  w = np.tile(weights * half, len(edges))
  density = np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi)
  return x, w * density


def gaussian_moments(activation: ActivationLike, std: float = 1.0) -> tuple[float, float]:
  """Mean and variance of ``g(x)`` for ``x ~ N(0, std^2)``, by quadrature in float64."""
  fn = get_activation(activation)
  x, w = _quadrature_rule()
  with jax.ensure_compile_time_eval(), jax.enable_x64(True):
    values = np.asarray(fn(jnp.asarray(std * x, dtype=jnp.float64)), dtype=np.float64)
  mean = float(np.sum(w * values))
  variance = float(np.sum(w * (values - mean) ** 2))
  return mean, variance


@functools.cache
def _named_gamma(name: str) -> float:
  _, variance = gaussian_moments(name)
  return float(1.0 / np.sqrt(variance))


def gamma(activation: ActivationLike, *, reference: bool = False) -> float:
  """``1 / sqrt(Var[g(x)])`` for ``x ~ N(0, 1)`` (paper Section 4, gamma constants).

  Args:
    activation: a registered name or any elementwise callable.
    reference: return the reference code's hard-coded constant instead of the
      exact value (named activations only).

  Returns:
    The gain that makes ``gamma * g(x)`` unit-variance.
  """
  if reference:
    if not isinstance(activation, str) or activation not in REFERENCE_GAMMAS:
      raise ValueError(
        f"no reference gamma for {activation!r}; allowed: {', '.join(sorted(REFERENCE_GAMMAS))}"
      )
    return REFERENCE_GAMMAS[activation]
  if isinstance(activation, str):
    get_activation(activation)  # Validates the name.
    return _named_gamma(activation)
  _, variance = gaussian_moments(activation)
  return float(1.0 / np.sqrt(variance))


def scaled_activation(activation: ActivationLike, *, reference: bool = False) -> Activation:
  """Returns ``x -> gamma * g(x)``, unit-variance on unit-Gaussian inputs.

  Args:
    activation: a registered name or any elementwise callable.
    reference: use the reference code's constant instead of the exact gamma.
  """
  fn = get_activation(activation)
  scale = gamma(activation, reference=reference)

  def scaled(x: jax.Array) -> jax.Array:
    return fn(x) * jnp.asarray(scale, dtype=x.dtype)

  scaled.__name__ = f"scaled_{getattr(fn, '__name__', 'activation')}"
  return scaled
