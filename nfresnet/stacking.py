"""Stacked residual blocks: one scan per stage, so compile time does not grow with depth.

Inside a stage every block after the transition block has the same shapes
(stride 1, ``in_channels == out_channels``, identity shortcut); only its beta
and stochastic-depth rate differ. ``stacked_blocks`` runs the transition block
as usual and the rest of the stage as a scan over one block whose parameters
carry a leading block axis, with beta, the drop rate and the stochastic-depth
key as scanned inputs. The traced program holds one block per stage whatever
the depth, so NF-ResNet-600 compiles about as fast as NF-ResNet-50.

Parameter layout (``NFResNet(..., stack_blocks=True)``)::

  nf_resnet/stage2_block1/conv0      w: (1, 1, 256, 128)       transition, unrolled
  nf_resnet/stage2_blocks/conv0      w: (3, 1, 1, 512, 128)    blocks 2..4, stacked
  nf_resnet/stage2_blocks            skip_gain: (3,)

``stack_params`` and ``unstack_params`` convert between this layout and the
unrolled one (``stage2_block2`` ... ``stage2_block4``) for checkpoints and for
analysis tools: signal-propagation plots intercept per-block methods, which
cannot escape a scan, so they measure the unrolled model built with
``stack_blocks=False`` from ``unstack_params(params)``; the numerics are the same.

Random numbers match the unrolled model: the stack draws one key per block from
the enclosing Haiku sequence, in block order, exactly where the unrolled blocks
would draw them, and each scanned block receives its key as the first
``hk.next_rng_key()``. Blocks that draw more than one key per call are not
supported with stochastic depth on.

Rematerialization (``remat=True``) wraps the transition blocks in ``hk.remat``
(``nfresnet.blocks.call_block``) and each scanned block's pure ``apply`` in
``jax.checkpoint``, so the scan keeps only the blocks' inputs for the backward pass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfresnet.blocks import ResidualBlock, call_block
from nfresnet.conv_lowering import loop_conv2d
from nfresnet.layout import BlockSpec
from nfresnet.ws_conv import lowering_override

BlockFactory = Callable[[BlockSpec], ResidualBlock]

_UNROLLED = re.compile(
  r"^(?P<prefix>(?:.*/)?)stage(?P<stage>\d+)_block(?P<block>\d+)(?P<rest>/.*)?$"
)
_STACKED = re.compile(r"^(?P<prefix>(?:.*/)?)stage(?P<stage>\d+)_blocks(?P<rest>/.*)?$")


def is_stacked_module(module_name: str) -> bool:
  """Whether ``module_name`` holds stacked blocks (parameters with a leading block axis)."""
  return _STACKED.match(module_name) is not None


def stack_name(stage: int) -> str:
  """Module name of the stacked blocks of 0-based ``stage``: ``stage{stage + 1}_blocks``."""
  return f"stage{stage + 1}_blocks"


def stage_runs(specs: Sequence[BlockSpec]) -> list[tuple[BlockSpec, list[BlockSpec]]]:
  """Splits block specs into ``(transition block, following blocks)`` per stage.

  Args:
    specs: the model's block specs, in order.

  Returns:
    One ``(transition spec, [following specs])`` pair per stage.

  Raises:
    ValueError: a non-transition block whose shapes differ from its stage's.
  """
  runs: list[tuple[BlockSpec, list[BlockSpec]]] = []
  for spec in specs:
    if spec.transition or not runs:
      runs.append((spec, []))
      continue
    first, rest = runs[-1]
    if spec.stride != 1 or spec.use_projection or spec.in_channels != first.out_channels:
      raise ValueError(f"block {spec.name} cannot be stacked: its shapes differ from its stage's")
    rest.append(spec)
  return runs


def _draws_keys(run: Sequence[BlockSpec], is_training: bool) -> bool:
  """Whether the blocks of ``run`` draw stochastic-depth keys (all do or none do)."""
  draws = [is_training and s.stochdepth_rate != 0.0 for s in run]
  if any(draws) and not all(draws):
    raise ValueError("stacked blocks must all use stochastic depth or none of them")
  return all(draws)


def _scan_blocks(
  make_block: BlockFactory,
  run: Sequence[BlockSpec],
  h: jax.Array,
  is_training: bool,
  remat: bool = False,
) -> jax.Array:
  """Applies the identical blocks of ``run`` to ``h`` as one scan (``remat``: checkpointed)."""
  template = dataclasses.replace(run[0], name=stack_name(run[0].stage))
  draws = _draws_keys(run, is_training)

  def one_block(x: jax.Array, beta, rate) -> jax.Array:
    spec = dataclasses.replace(template, beta=beta, stochdepth_rate=rate)
    with lowering_override(loop_conv2d):  # Fast convs inside the scan on CPU.
      return make_block(spec)(x, is_training)

  block = hk.transform(one_block)

  def init_stack(rng: jax.Array, x: jax.Array) -> hk.Params:
    keys = jax.random.split(rng, len(run))
    return jax.lax.map(lambda k: block.init(k, x, template.beta, template.stochdepth_rate), keys)

  rng = hk.next_rng_key() if hk.running_init() else None
  # When applying, a transparent lift returns every parameter of the enclosing
  # module: keep this stack's own.
  lifted = hk.transparent_lift(init_stack)(rng, h)
  params = {k: v for k, v in lifted.items() if k.split("/")[0] == template.name}

  betas = jnp.asarray(np.array([s.beta for s in run]), jnp.float32)
  rates = jnp.asarray(np.array([s.stochdepth_rate for s in run]), jnp.float32) if draws else None
  keys = jnp.stack([hk.next_rng_key() for _ in run]) if draws else None

  def apply_block(block_params, block_rng, x, beta, rate):
    # Without stochastic depth the rate stays the Python 0.0 (no mask is drawn).
    return block.apply(block_params, block_rng, x, beta, rate if draws else 0.0)

  if remat:
    apply_block = jax.checkpoint(apply_block)

  def step(x, scanned):
    block_params, beta, rate, key = scanned
    # A sequence state whose first key is ``key``: the block draws exactly this key.
    block_rng = (key, (key,)) if draws else None
    return apply_block(block_params, block_rng, x, beta, rate), None

  h, _ = jax.lax.scan(step, h, (params, betas, rates, keys))
  return h


def stacked_blocks(
  make_block: BlockFactory,
  specs: Sequence[BlockSpec],
  h: jax.Array,
  is_training: bool,
  *,
  remat: bool = False,
) -> jax.Array:
  """Applies ``specs`` in order, each stage's non-transition blocks as one scan.

  Call inside a Haiku module (the model); parameters are created in its scope.

  Args:
    make_block: builds a block from a spec, e.g.
      ``functools.partial(NFBottleneckBlock, activation=..., alpha=...)``. It
      must read the spec's ``beta`` and ``stochdepth_rate`` as values that may
      be traced.
    specs: the model's block specs.
    h: stem output.
    is_training: forwarded to every block.
    remat: recompute every block's activations in the backward pass.

  Returns:
    The output of the last block, equal to the unrolled loop's.
  """
  for first, rest in stage_runs(specs):
    h = call_block(make_block(first), h, is_training, remat)
    if rest:
      h = _scan_blocks(make_block, rest, h, is_training, remat)
  return h


def stack_params(params: Mapping[str, Mapping[str, jax.Array]]) -> dict:
  """Unrolled layout -> stacked layout (``stage{s}_block{b}``, b >= 2 -> ``stage{s}_blocks``).

  Works on any Haiku-style ``{module_path: {name: array}}`` mapping (parameters,
  or optimizer-state trees shaped like them). Transition blocks (``block1``)
  and modules outside the blocks are copied unchanged.

  Args:
    params: ``{module_path: {name: array}}`` in the unrolled layout.

  Returns:
    The same leaves, non-transition blocks stacked along a new leading axis.

  Raises:
    ValueError: a stage whose stacked blocks are not numbered 2, 3, ... n.
  """
  out: dict = {}
  grouped: dict[tuple[str, str, str], dict[int, Mapping[str, jax.Array]]] = {}
  for path, leaves in params.items():
    match = _UNROLLED.match(path)
    if match is None or int(match["block"]) == 1:
      out[path] = dict(leaves)
      continue
    key = (match["prefix"], match["stage"], match["rest"] or "")
    grouped.setdefault(key, {})[int(match["block"])] = leaves
  for (prefix, stage, rest), blocks in grouped.items():
    if sorted(blocks) != list(range(2, len(blocks) + 2)):
      raise ValueError(f"stage{stage} blocks {sorted(blocks)} are not numbered 2..n")
    ordered = [blocks[b] for b in sorted(blocks)]
    path = f"{prefix}{stack_name(int(stage) - 1)}{rest}"
    out[path] = {name: jnp.stack([leaves[name] for leaves in ordered]) for name in ordered[0]}
  return out


def unstack_params(params: Mapping[str, Mapping[str, jax.Array]]) -> dict:
  """Stacked layout -> unrolled layout; the inverse of ``stack_params``.

  Args:
    params: ``{module_path: {name: array}}`` in the stacked layout.

  Returns:
    One ``stage{s}_block{b}`` entry per stacked block (b = 2, 3, ...).
  """
  out: dict = {}
  for path, leaves in params.items():
    match = _STACKED.match(path)
    if match is None:
      out[path] = dict(leaves)
      continue
    count = len(next(iter(leaves.values())))
    for i in range(count):
      name = f"{match['prefix']}stage{match['stage']}_block{i + 2}{match['rest'] or ''}"
      out[name] = {k: v[i] for k, v in leaves.items()}
  return out
