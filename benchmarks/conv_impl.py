"""Force one convolution lowering from outside the model, to compare against the default.

``nfresnet.conv_lowering.conv2d`` picks per convolution on CPU: matrix products
for 1x1 kernels and for up to 3x3 kernels with tiny output maps, ``lax.conv``
otherwise. For measurements, an ``hk.intercept_methods`` context overrides
that choice for every ``nfresnet`` ``Conv2D``/``WSConv2D`` call (same
parameters, same kernel standardization, same result up to float32 summation
order):

- ``auto``: the library's choice (no interception);
- ``xla``: ``lax.conv`` everywhere (the lowering before issue 7's CPU path);
- ``shifted_dots``: matrix products for every ungrouped convolution up to 3x3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import haiku as hk
import jax

from nfresnet.conv_lowering import products_apply, shifted_dots_conv, xla_conv
from nfresnet.ws_conv import Conv2D

CONV_IMPLS = ("auto", "xla", "shifted_dots")


def _xla(conv: Conv2D, x: jax.Array) -> jax.Array:
  kernel = conv.kernel(x.shape[-1])
  return conv.add_bias(xla_conv(x, kernel, conv.stride, conv.padding, conv.feature_group_count))


def _shifted(conv: Conv2D, x: jax.Array) -> jax.Array:
  if not products_apply(conv.kernel_shape, conv.padding, conv.feature_group_count):
    return _xla(conv, x)
  return conv.add_bias(shifted_dots_conv(x, conv.kernel(x.shape[-1]), conv.stride, conv.padding))


def _interceptor(lowering: Callable[[Conv2D, jax.Array], jax.Array]):
  def interceptor(method, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, Conv2D):
      return lowering(context.module, *args, **kwargs)
    return method(*args, **kwargs)

  return interceptor


def conv_context(impl: str) -> contextlib.AbstractContextManager:
  """The context forcing ``impl`` (``auto``: no change)."""
  lowerings = {"xla": _xla, "shifted_dots": _shifted}
  if impl not in lowerings:
    return contextlib.nullcontext()
  return hk.intercept_methods(_interceptor(lowerings[impl]))
