"""Parameter and multiply-accumulate counts.

``count_macs`` is an exact analytic count: it intercepts every convolution and
linear layer while the model is traced abstractly (``jax.eval_shape``, nothing
is computed) and adds ``H_out * W_out * C_out * kh * kw * C_in / groups`` per
example for convs and ``C_in * C_out`` for linear layers. Elementwise ops,
pooling and standardization are not counted; that is the convention behind
"4.1 G multiply-accumulates" for ResNet-50 at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfresnet.ws_conv import Conv2D


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))


def _layer_macs(module: hk.Module, x: jax.Array, out: jax.Array) -> int:
  if isinstance(module, (Conv2D, hk.Conv2D)):
    kh, kw = module.kernel_shape
    groups = module.feature_group_count
    return int(np.prod(out.shape) * kh * kw * x.shape[-1] // groups)
  if isinstance(module, hk.Linear):
    return int(np.prod(out.shape) * x.shape[-1])
  return 0


def count_macs(model_fn: Callable[[jax.Array], jax.Array], input_shape: Sequence[int]) -> int:
  """Multiply-accumulates of one forward pass, per example.

  Args:
    model_fn: builds and applies a model inside a Haiku transform, e.g.
      ``lambda x: NFResNet(1000)(x, is_training=False)``.
    input_shape: NHWC input shape; the count is divided by the batch size N.

  Returns:
    Multiply-accumulates per example (conv and linear layers).
  """
  total = []

  def interceptor(method, args, kwargs, context):
    out = method(*args, **kwargs)
    if context.method_name == "__call__" and args:
      total.append(_layer_macs(context.module, args[0], out))
    return out

  def counted(x):
    with hk.intercept_methods(interceptor):
      return model_fn(x)

  transformed = hk.transform_with_state(counted)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  rng = jax.random.key(0)
  jax.eval_shape(transformed.init, rng, x)  # Init traces the forward pass once.
  return int(sum(total)) // int(input_shape[0])
