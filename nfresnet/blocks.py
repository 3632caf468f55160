"""Residual blocks: the shared base, squeeze-excite, stochastic depth and NF blocks.

Every residual block in the library subclasses ``ResidualBlock`` and passes
its residual-branch output through ``residual_output``, an identity method.
Analysis code (signal propagation) intercepts ``residual_output`` and
``__call__`` from outside the model with ``hk.intercept_methods``; blocks have
no metrics flags. ``branch`` methods are ``hk.transparent`` so parameter paths
stay ``stage1_block1/conv0``.

NF blocks implement the residual block of paper Section 4,
``h_{i+1} = h_i + alpha * f_i(h_i / beta_i)``, in the reference implementation's
pre-activation form ``h_{i+1} = h_i + alpha * skip_gain_i * f_i(g(h_i) / beta_i)``.
"""

from __future__ import annotations

from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from nfresnet.layout import BOTTLENECK_EXPANSION, BlockSpec
from nfresnet.ws_conv import WSConv2D

ConvFactory = Callable[..., hk.Module]


def stochastic_depth(
  x: jax.Array, rate: float, is_training: bool, *, rescale: bool = False
) -> jax.Array:
  """Drops whole examples of ``x`` with probability ``rate`` (training only).

  Args:
    x: branch output, batch-major.
    rate: drop probability: a Python float, or a traced scalar (stacked
      blocks, see ``nfresnet.stacking``), which always draws a mask.
    is_training: identity when False.
    rescale: divide kept examples by ``1 - rate``; the reference does not.
  """
  if not is_training or (not isinstance(rate, jax.Array) and rate == 0.0):
    return x
  keep_prob = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(hk.next_rng_key(), keep_prob, shape).astype(x.dtype)
  if rescale:
    mask = mask / jnp.asarray(keep_prob, x.dtype)
  return x * mask


class SqueezeExcite(hk.Module):
  """``x * 2 * sigmoid(MLP(mean_HW(x)))`` with a plain-ReLU hidden layer.

  The factor 2 and the ReLU follow the reference implementation (docs/paper_map.md).

  Args:
    channels: input and output channels (the gate has one value per channel).
    hidden: width of the hidden layer.
    name: module name.
  """

  def __init__(self, channels: int, hidden: int, name: str | None = None):
    super().__init__(name=name)
    self.channels = channels
    self.hidden = hidden

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    hidden = jax.nn.relu(hk.Linear(self.hidden, name="linear0")(pooled))
    gate = 2.0 * jax.nn.sigmoid(hk.Linear(self.channels, name="linear1")(hidden))
    return x * gate[:, None, None, :].astype(x.dtype)


def squeeze_excite(x: jax.Array, se_ratio: float) -> jax.Array:
  """``SqueezeExcite`` named "squeeze_excite", hidden width ``se_ratio`` times the channels."""
  hidden = max(1, int(x.shape[-1] * se_ratio))
  return SqueezeExcite(x.shape[-1], hidden, name="squeeze_excite")(x)


def projection_shortcut(
  x: jax.Array, spec: BlockSpec, conv: ConvFactory, *, avg_down: bool = False
) -> jax.Array:
  """1x1 conv "conv_shortcut" of ``x`` to ``spec.out_channels`` at ``spec.stride``.

  With ``avg_down`` a strided shortcut average-pools (stride x stride) first and
  the conv has stride 1 (ResNet-D, NF-RegNets).
  """
  stride = spec.stride
  if avg_down and stride > 1:
    x = hk.avg_pool(x, (1, stride, stride, 1), (1, stride, stride, 1), "SAME")
    stride = 1
  return conv(spec.out_channels, 1, stride=stride, name="conv_shortcut")(x)


class ResidualBlock(hk.Module):
  """Base of all residual blocks.

  Subclasses implement ``branch`` (decorated ``@hk.transparent``) and
  ``__call__(x, is_training)``, and pass the branch output through
  ``residual_output`` before stochastic depth, skip gain and alpha: that is
  where the residual average channel variance of the paper's Signal Propagation
  Plots (Section 3) is measured.
  """

  spec: BlockSpec

  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Residual branch; subclasses decorate it with ``@hk.transparent``."""
    raise NotImplementedError

  def residual_output(self, residual: jax.Array) -> jax.Array:
    """Identity: marks the residual-branch output for method interceptors."""
    return residual


def call_block(block: hk.Module, x: jax.Array, is_training: bool, remat: bool = False) -> jax.Array:
  """``block(x, is_training)``, recomputing its activations in the backward pass if ``remat``.

  The one place every model of the library applies its residual blocks. With
  ``remat`` the call runs under ``hk.remat``: only the block's input is kept for
  the backward pass and its inner activations are recomputed there, trading about
  one more forward pass of compute for activation memory that no longer grows with
  the block's width. Parameter names, values, random numbers and outputs are those
  of the plain call, so checkpoints are interchangeable.

  Args:
    block: a constructed residual block (its name, and so its parameter paths, are
      fixed when it is constructed).
    x: the block's input.
    is_training: forwarded to the block (static).
    remat: rematerialize the block's activations.

  Returns:
    The block's output.
  """
  if not remat:
    return block(x, is_training)
  return hk.remat(lambda h: block(h, is_training))(x)


class NFBlock(ResidualBlock):
  """Pre-activation normalizer-free block, base of the bottleneck and basic blocks.

  ``__call__`` computes ``out = g(x) / beta``; the shortcut is a 1x1 Scaled-WS
  conv of ``out`` when the block changes stride or width, else the raw ``x``;
  then ``shortcut + alpha * skip_gain * stochastic_depth(branch(out))``.

  Args:
    spec: the block's layout: channels, stride, ``beta``, stochastic-depth rate
      and whether the shortcut is a projection.
    activation: the nonlinearity ``g`` (gamma-scaled in Scaled-WS networks).
    alpha: residual scale; the branch output is multiplied by ``alpha * skip_gain``.
    skip_gain_init: initial value of the learnable scalar ``skip_gain`` (0 for
      training, 1 for signal-propagation plots).
    use_se: squeeze-excite on the branch output.
    se_ratio: squeeze-excite hidden width as a fraction of its input channels.
    avg_down: on a strided projection shortcut, average-pool (stride x stride)
      and then apply a stride-1 1x1 conv (ResNet-D, NF-RegNets).
    rescale_stochdepth: divide kept branches by the keep probability; the
      reference implementation does not.
    conv: conv module factory, ``WSConv2D`` or ``Conv2D`` (the "He init" network).
  """

  def __init__(
    self,
    spec: BlockSpec,
    *,
    activation: Callable[[jax.Array], jax.Array],
    alpha: float = 0.2,
    skip_gain_init: float = 0.0,
    use_se: bool = False,
    se_ratio: float = 0.25,
    avg_down: bool = False,
    rescale_stochdepth: bool = False,
    conv: ConvFactory = WSConv2D,
  ):
    super().__init__(name=spec.name)
    self.spec = spec
    self.activation = activation
    self.alpha = alpha
    self.skip_gain_init = skip_gain_init
    self.use_se = use_se
    self.se_ratio = se_ratio
    self.avg_down = avg_down
    self.rescale_stochdepth = rescale_stochdepth
    self.conv = conv

  @hk.transparent
  def shortcut(self, x: jax.Array, out: jax.Array) -> jax.Array:
    """Identity on ``x``, or a strided 1x1 conv of the pre-activated ``out``."""
    if not self.spec.use_projection:
      return x
    return projection_shortcut(out, self.spec, self.conv, avg_down=self.avg_down)

  @hk.transparent
  def squeeze_excite(self, x: jax.Array) -> jax.Array:
    if not self.use_se:
      return x
    return squeeze_excite(x, self.se_ratio)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    out = self.activation(x) * jnp.asarray(1.0 / self.spec.beta, x.dtype)
    shortcut = self.shortcut(x, out)
    residual = self.residual_output(self.branch(out, is_training))
    residual = stochastic_depth(
      residual, self.spec.stochdepth_rate, is_training, rescale=self.rescale_stochdepth
    )
    skip_gain = hk.get_parameter(
      "skip_gain", (), jnp.float32, init=hk.initializers.Constant(self.skip_gain_init)
    )
    scale = (self.alpha * skip_gain).astype(residual.dtype)
    return shortcut + scale * residual


class NFBottleneckBlock(NFBlock):
  """1x1 conv to width/4 -> g -> 3x3 conv (stride) -> g -> 1x1 conv to width.

  Args: as ``NFBlock``.
  """

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    mid = max(1, self.spec.out_channels // BOTTLENECK_EXPANSION)
    out = self.conv(mid, 1, name="conv0")(x)
    out = self.conv(mid, 3, stride=self.spec.stride, name="conv1")(self.activation(out))
    out = self.conv(self.spec.out_channels, 1, name="conv2")(self.activation(out))
    return self.squeeze_excite(out)


class NFBasicBlock(NFBlock):
  """3x3 conv (stride) -> g -> 3x3 conv.

  Args: as ``NFBlock``.
  """

  @hk.transparent
  def branch(self, x: jax.Array, is_training: bool) -> jax.Array:
    out = self.conv(self.spec.out_channels, 3, stride=self.spec.stride, name="conv0")(x)
    out = self.conv(self.spec.out_channels, 3, name="conv1")(self.activation(out))
    return self.squeeze_excite(out)


NF_BLOCKS = {"bottleneck": NFBottleneckBlock, "basic": NFBasicBlock}
