"""Force one convolution lowering from outside the model, to compare against the default.

``nfresnet.conv_lowering.conv2d`` picks per convolution on CPU: matrix products
for 1x1 kernels and for up to 3x3 kernels with tiny output maps, ``lax.conv``
otherwise. For measurements, ``nfresnet.ws_conv.lowering_override`` overrides
that choice for every ``nfresnet`` ``Conv2D``/``WSConv2D`` call (same
parameters, same kernel standardization, same result up to float32 summation
order):

- ``auto``: the library's choice (no interception);
- ``xla``: ``lax.conv`` everywhere (no matrix-product path on CPU);
- ``shifted_dots``: matrix products for every ungrouped convolution up to 3x3.
"""

from __future__ import annotations

import contextlib

import jax

from nfresnet.conv_lowering import products_apply, shifted_dots_conv, xla_conv
from nfresnet.ws_conv import lowering_override

CONV_IMPLS = ("auto", "xla", "shifted_dots")


def products_everywhere(
  x: jax.Array, kernel: jax.Array, stride: int, padding: str, groups: int
) -> jax.Array:
  """Matrix products wherever they apply (any platform), ``lax.conv`` elsewhere."""
  if not products_apply(kernel.shape, padding, groups):
    return xla_conv(x, kernel, stride, padding, groups)
  return shifted_dots_conv(x, kernel, stride, padding)


def conv_context(impl: str) -> contextlib.AbstractContextManager:
  """The context forcing ``impl`` (``auto``: no change)."""
  lowerings = {"xla": xla_conv, "shifted_dots": products_everywhere}
  if impl not in lowerings:
    return contextlib.nullcontext()
  return lowering_override(lowerings[impl])
