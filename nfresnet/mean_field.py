"""Mean-field prediction of a Scaled-WS NF-ResNet's variances for any activation.

``expected_signal_variance`` is the bookkeeping that sets every ``beta``: it
assumes ``gamma * g`` maps an input of variance ``v`` to an output of variance
``v``. That holds for positively homogeneous nonlinearities (ReLU), but gamma
normalizes ``g`` for unit-Gaussian inputs only. For SiLU, GELU and the like,
``F(v) = gamma^2 * Var[g(sqrt(v) * z)]``, ``z ~ N(0, 1)``, exceeds ``v`` when
``v > 1``, and NF blocks feed ``g(h) / beta`` with ``Var(h) = beta^2 > 1``.

With each Scaled-WS conv (gain 1) passing its input variance through
unchanged, the channel variance then follows a scalar recursion per block::

  x = F(v) / beta^2                          # branch input, g(h) / beta
  r = F(F(x)) (bottleneck) or F(x) (basic)   # residual-branch variance
  v = (x if projection shortcut else v) + alpha^2 * r

The projection shortcut of a transition block carries any excess over the
analytic curve into the next stage, so it compounds with depth. For ReLU the
recursion reproduces ``1 + k * alpha^2`` exactly. It ignores zero padding,
which lowers variances on small maps (docs/signal_propagation.md).
"""

from __future__ import annotations

import numpy as np

from nfresnet.activations import ActivationLike, gamma, gaussian_moments
from nfresnet.layout import resnet_specs

BRANCH_ACTIVATIONS = {"bottleneck": 3, "basic": 2}


def variance_map(activation: ActivationLike, v: float) -> float:
  """``gamma^2 * Var[g(x)]`` for ``x ~ N(0, v)``: one gamma-scaled activation."""
  _, variance = gaussian_moments(activation, std=float(np.sqrt(v)))
  return gamma(activation) ** 2 * variance


def mean_field_signal_variance(
  depth: int, activation: ActivationLike = "relu", *, alpha: float = 0.2, stem_var: float = 1.0
) -> dict[str, np.ndarray]:
  """Predicted ``avg_var`` and ``residual_var`` of every block of an NF-ResNet.

  Args:
    depth: a ResNet depth from the variant table.
    activation: the NF network's activation (scaled by its exact gamma).
    alpha: the residual scale.
    stem_var: channel variance of the stem output (1 for a Scaled-WS stem).

  Returns:
    ``{"avg_var": ..., "residual_var": ...}``, float64 arrays, one entry per block.
  """
  block_type, _, specs = resnet_specs(depth, alpha=alpha)
  branch_maps = BRANCH_ACTIVATIONS[block_type] - 1
  v, out, residual = stem_var, [], []
  for spec in specs:
    x = variance_map(activation, v) / spec.beta**2
    r = x
    for _ in range(branch_maps):
      r = variance_map(activation, r)
    v = (x if spec.use_projection else v) + alpha**2 * r
    out.append(v)
    residual.append(r)
  return {"avg_var": np.asarray(out), "residual_var": np.asarray(residual)}
