"""Rematerialization (``remat=True``): same parameters, outputs, gradients and state.

Tiny models (1/16 width, 8 px, batch 4) with random parameters drawn in numpy, so
nothing is initialized by a compiled program; one jit per model and setting.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf

X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
RNG = jax.random.key(3)
NF_TINY = dict(width=1 / 16, stem="cifar", skip_gain_init=1.0, stochdepth_rate=0.5)

# Every model whose blocks run in a loop, tiny; ``remat`` is added per test.
MODELS = {
  "nf_resnet": functools.partial(nf.NFResNet, depth=26, **NF_TINY),
  "nf_resnet_stacked": functools.partial(nf.NFResNet, depth=26, stack_blocks=True, **NF_TINY),
  "resnet_v2": functools.partial(nf.ResNetV2, depth=18, width=1 / 16, stem="cifar"),
  "skipinit": functools.partial(nf.SkipInitResNet, depth=18, width=1 / 16, stem="cifar"),
  "fixup": functools.partial(nf.FixupResNet, depth=18, width=1 / 16, stem="cifar"),
  "nf_regnet": functools.partial(nf.NFRegNet, variant="B0", width=0.125),
  "bn_regnet": functools.partial(nf.BNRegNet, variant="B0", width=0.125),
  "nfnet": functools.partial(nf.NFNet, variant="F0", width=1 / 16, group_width=8),
}


def transformed(name: str, remat: bool) -> hk.TransformedWithState:
  return hk.transform_with_state(
    lambda x, is_training: MODELS[name](5, remat=remat)(x, is_training)
  )


def init_shapes(model: hk.TransformedWithState):
  return jax.eval_shape(lambda k: model.init(k, X, True), jax.random.key(0))


def random_params(shapes: hk.Params, seed: int = 0) -> hk.Params:
  """Parameters drawn in numpy: gains near 1, every branch active."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    name = path[-1].key
    if name in ("gain", "skip_gain", "scale"):
      return 1.0 + 0.1 * noise
    return noise if name == "w" and leaf.ndim >= 4 else 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def train_outputs(model: hk.TransformedWithState, params: hk.Params, state: hk.State):
  """Training logits, new state and gradients of the logits' mean square (one jit)."""

  def loss(p):
    logits, new_state = model.apply(p, state, RNG, X, True)
    return jnp.mean(jnp.square(logits)), (logits, new_state)

  @jax.jit
  def run(p):
    grads, (logits, new_state) = jax.grad(loss, has_aux=True)(p)
    return logits, new_state, grads

  return run(params)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remat_keeps_parameter_and_state_names_and_shapes(name):
  plain, remat = init_shapes(transformed(name, False)), init_shapes(transformed(name, True))
  assert jax.tree.structure(remat) == jax.tree.structure(plain)
  same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), plain, remat)
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize(
  ("name", "remat"), [("nf_resnet", True), ("nf_resnet_stacked", True), ("nf_resnet", False)]
)
def test_remat_appears_in_the_traced_model(name, remat):
  params, state = init_shapes(transformed(name, False))
  model = transformed(name, remat)
  jaxpr = str(jax.make_jaxpr(lambda p, s: model.apply(p, s, RNG, X, True))(params, state))
  assert ("remat" in jaxpr or "checkpoint" in jaxpr) == remat


@pytest.mark.parametrize("name", ["nf_resnet", "nf_resnet_stacked", "resnet_v2"])
def test_remat_same_logits_gradients_and_state(name):
  """With and without remat: same training logits, gradients and BN statistics.

  The NF-ResNets use stochastic depth (rate 0.5), so the random keys match too.
  """
  shapes, state_shapes = init_shapes(transformed(name, False))
  params = random_params(shapes)
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state_shapes)
  if name == "resnet_v2":  # Moving variances of 1 (the initial ones).
    state = {
      k: {**v, "average": jnp.ones_like(v["average"])} if "var_ema" in k else v
      for k, v in state.items()
    }
  plain = train_outputs(transformed(name, False), params, state)
  remat = train_outputs(transformed(name, True), params, state)
  assert float(jnp.std(plain[0])) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), plain, remat)
