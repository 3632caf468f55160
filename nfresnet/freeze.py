"""Frozen inference: precompute what is constant once the weights stop changing.

Scaled WS (paper Section 4.2) standardizes every kernel on every call; at inference
the standardized kernel is a constant. ``freeze(params)`` computes it once and
stores it as ``w_hat`` in place of ``w`` and ``gain``; under ``frozen()`` every
``WSConv2D`` reads ``w_hat`` instead of standardizing, so an NF network
evaluates like a plain conv net::

  frozen_params = nfresnet.freeze(params)
  with nfresnet.frozen():
    logits = model.apply(frozen_params, None, images, is_training=False)

The renamed parameter makes misuse loud: frozen parameters without the context
(or live ones inside it) fail with a missing-parameter error instead of
silently standardizing twice or not at all.

The BatchNorm baseline gets the same treatment for a fair comparison:
``fold_batchnorm(params, state)`` turns each evaluation-mode BatchNorm into a
per-channel affine ``x * folded_scale + folded_offset`` and, in BN-ReLU-Conv
blocks, multiplies ``bn1`` and ``bn2`` scales into the convs that precede them
(leaving only the offset). The block-input and final BatchNorms act on the
residual stream, a sum of branches, so no single conv can absorb them: they
stay a fused per-channel affine, the exact minimum for pre-activation ResNets.
With ReLU-BN-Conv a ReLU sits between every conv and BN, so nothing folds into
a conv there. Use ``folded_batchnorm()`` around the apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.ws_conv import WS_EPSILON, WSConv2D, standardize_kernel

FROZEN_KERNEL = "w_hat"
FOLDED_SCALE = "folded_scale"
FOLDED_OFFSET = "folded_offset"
BN_EPSILON = 1e-5  # hk.BatchNorm's default, used by ResNetV2.
# BatchNorm -> the conv whose output it normalizes (BN-ReLU-Conv bottleneck/basic branch).
_BN_AFTER_CONV = {"bn1": "conv0", "bn2": "conv1"}

Params = Mapping[str, Mapping[str, jax.Array]]


def _standardize(w: jax.Array, gain: jax.Array, eps: float) -> jax.Array:
  """``standardize_kernel`` mapped over leading axes (stacked blocks carry one)."""
  fn = lambda w, g: standardize_kernel(w, g, eps)
  for _ in range(w.ndim - 4):
    fn = jax.vmap(fn)
  return fn(w, gain)


def is_ws_conv(leaves: Mapping[str, jax.Array]) -> bool:
  """A module with a kernel ``w`` and a ``gain`` is a Scaled-WS conv (``WSConv2D``)."""
  return "w" in leaves and "gain" in leaves


def freeze(params: Params, eps: float = WS_EPSILON) -> dict:
  """Replaces every Scaled-WS conv's ``w`` and ``gain`` by its standardized kernel.

  Args:
    params: NF model parameters (unrolled or stacked layout).
    eps: the convs' WS epsilon (the library default unless you changed it).

  Returns:
    Parameters for ``frozen()``: each WS conv holds ``w_hat`` (float32) and
    its ``bias``; every other module is unchanged.
  """
  out = {}
  for path, leaves in params.items():
    if not is_ws_conv(leaves):
      out[path] = dict(leaves)
      continue
    rest = {k: v for k, v in leaves.items() if k not in ("w", "gain")}
    out[path] = {FROZEN_KERNEL: _standardize(leaves["w"], leaves["gain"], eps), **rest}
  return out


def _frozen_kernel(method, args, kwargs, context):
  if context.method_name != "kernel" or not isinstance(context.module, WSConv2D):
    return method(*args, **kwargs)
  conv: WSConv2D = context.module
  (input_channels,) = args
  shape = conv.kernel_shape + (
    input_channels // conv.feature_group_count,
    conv.output_channels,
  )
  return hk.get_parameter(FROZEN_KERNEL, shape, jnp.float32, init=_not_frozen)


def _not_frozen(shape, dtype):
  raise ValueError(f"no {FROZEN_KERNEL}: frozen() needs parameters from nfresnet.freeze(params)")


@contextlib.contextmanager
def frozen() -> Iterator[None]:
  """Inside, ``WSConv2D`` uses the precomputed ``w_hat`` from ``freeze`` (apply only)."""
  with hk.intercept_methods(_frozen_kernel):
    yield


def _bn_affine(
  params: Mapping[str, jax.Array], state: hk.State, path: str, eps: float
) -> tuple[jax.Array, jax.Array]:
  mean = state[f"{path}/~/mean_ema"]["average"]
  var = state[f"{path}/~/var_ema"]["average"]
  scale = params["scale"] * jax.lax.rsqrt(var + eps)
  return scale, params["offset"] - mean * scale


def fold_batchnorm(
  params: Params, state: hk.State, *, order: str = "bn_relu", eps: float = BN_EPSILON
) -> dict:
  """Evaluation-mode BatchNorms as per-channel affines, folded into convs where exact.

  Args:
    params: ``ResNetV2`` parameters.
    state: its state (the moving averages used at evaluation).
    order: the model's ``order``; only "bn_relu" has a conv right before a BN.
    eps: the BatchNorm epsilon.

  Returns:
    Parameters for ``folded_batchnorm()`` (the model state is no longer needed).
  """
  out = {path: dict(leaves) for path, leaves in params.items()}
  for path, leaves in params.items():
    if "scale" not in leaves or f"{path}/~/mean_ema" not in state:
      continue
    scale, offset = _bn_affine(leaves, state, path, eps)
    parent, _, name = path.rpartition("/")
    conv = f"{parent}/{_BN_AFTER_CONV.get(name)}"
    if order == "bn_relu" and name in _BN_AFTER_CONV and conv in params:
      # BN(conv(x, W)) = conv(x, W * s) + o: scale the conv's output channels.
      out[conv]["w"] = params[conv]["w"] * scale.reshape(-1)
      out[path] = {FOLDED_OFFSET: offset}
    else:
      out[path] = {FOLDED_SCALE: scale, FOLDED_OFFSET: offset}
  return out


def _folded_norm(method, args, kwargs, context):
  if context.method_name != "__call__" or not isinstance(context.module, hk.BatchNorm):
    return method(*args, **kwargs)
  x = args[0]
  own = hk.get_params().get(context.module.module_name, {})
  shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
  if FOLDED_SCALE in own:
    x = x * hk.get_parameter(FOLDED_SCALE, shape, x.dtype)
  return x + hk.get_parameter(FOLDED_OFFSET, shape, x.dtype)


@contextlib.contextmanager
def folded_batchnorm() -> Iterator[None]:
  """Inside, every ``hk.BatchNorm`` applies the affine from ``fold_batchnorm`` (apply only)."""
  with hk.intercept_methods(_folded_norm):
    yield
