"""Frozen inference: precomputed WS kernels and folded BatchNorm equal the live models."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf
from nfresnet.freeze import FOLDED_OFFSET, FOLDED_SCALE, FROZEN_KERNEL

X = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))


def _random_params(shapes: hk.Params, seed: int, scale: float = 0.1) -> hk.Params:
  """Parameters drawn in numpy (no compiled init): every gain, bias and skip gain matters."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    if path[-1].key in ("gain", "skip_gain", "scale"):
      return 1.0 + scale * noise
    return noise if path[-1].key == "w" else scale * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _init_shapes(model, x: jax.Array, is_training: bool):
  return jax.eval_shape(lambda k: model.init(k, x, is_training), jax.random.key(0))


def _live_and_frozen(model: hk.Transformed, params: hk.Params, x: jax.Array):
  live = jax.jit(lambda p: model.apply(p, None, x, False))(params)

  @jax.jit
  def run_frozen(p):
    with nf.frozen():
      return model.apply(p, None, x, False)

  return live, run_frozen(nf.freeze(params))


@pytest.mark.parametrize("stack", [False, True])
def test_frozen_nf_resnet_equals_live(stack):
  model = hk.transform(
    lambda x, t: nf.NFResNet(5, 26, width=1 / 16, stem="cifar", stack_blocks=stack)(x, t)
  )
  params = _random_params(_init_shapes(model, X, False), 1)
  live, frozen = _live_and_frozen(model, params, X)
  np.testing.assert_allclose(frozen, live, atol=1e-5, rtol=1e-5)
  assert float(jnp.std(live)) > 1e-2


def test_frozen_nf_regnet_equals_live_with_grouped_convs():
  model = hk.transform(lambda x, t: nf.NFRegNet(5, "B0", width=0.25)(x, t))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  params = _random_params(_init_shapes(model, x, False), 2)
  live, frozen = _live_and_frozen(model, params, x)
  np.testing.assert_allclose(frozen, live, atol=1e-5, rtol=1e-5)


def test_frozen_kernels_satisfy_scaled_ws_identities():
  w = jax.random.normal(jax.random.key(3), (3, 3, 8, 16))
  gain = 1.0 + jax.random.uniform(jax.random.key(4), (16,))
  params = {"net/conv": {"w": w, "gain": gain, "bias": jnp.zeros(16)}, "net/fc": {"w": w}}
  frozen = nf.freeze(params)
  assert set(frozen["net/conv"]) == {FROZEN_KERNEL, "bias"}
  assert set(frozen["net/fc"]) == {"w"}  # No gain: not a WS conv, unchanged.
  w_hat = frozen["net/conv"][FROZEN_KERNEL]
  np.testing.assert_allclose(jnp.sum(w_hat, axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.sum(w_hat**2, axis=(0, 1, 2)), gain**2, rtol=1e-5)
  stacked = nf.freeze({"s": {"w": jnp.stack([w, 2 * w]), "gain": jnp.stack([gain, gain])}})
  np.testing.assert_allclose(stacked["s"][FROZEN_KERNEL][1], w_hat, rtol=1e-5, atol=1e-6)


def test_mixing_frozen_and_live_fails_loudly():
  model = hk.transform(lambda x: nf.NFResNet(5, 18, width=1 / 16, stem="cifar")(x, False))
  params = jax.eval_shape(model.init, jax.random.key(0), X)
  with pytest.raises(ValueError, match="Unable to retrieve parameter 'w'"):
    jax.eval_shape(lambda p: model.apply(nf.freeze(p), None, X), params)
  with pytest.raises(ValueError, match=f"no {FROZEN_KERNEL}: frozen\\(\\) needs"):
    with nf.frozen():
      jax.eval_shape(lambda p: model.apply(p, None, X), params)


@pytest.mark.parametrize("order", ["bn_relu", "relu_bn"])
def test_folded_batchnorm_equals_evaluation_mode_bn(order):
  model = hk.transform_with_state(
    lambda x, t: nf.ResNetV2(5, 26, width=1 / 16, stem="cifar", order=order)(x, t)
  )
  params, state = _init_shapes(model, X, True)
  params = _random_params(params, 3, scale=0.3)
  rng = np.random.default_rng(4)  # Moving averages: any mean, positive variances.
  state = {
    path: {
      name: np.asarray(
        rng.uniform(0.5, 2.0, leaf.shape) if "var_ema" in path else rng.normal(size=leaf.shape),
        leaf.dtype,
      )
      for name, leaf in leaves.items()
    }
    for path, leaves in state.items()
  }
  live = jax.jit(lambda p, s: model.apply(p, s, None, X, False)[0])(params, state)
  folded = nf.fold_batchnorm(params, state, order=order)

  @jax.jit
  def run_folded(p):
    with nf.folded_batchnorm():
      return model.apply(p, {}, None, X, False)[0]

  np.testing.assert_allclose(
    run_folded(folded), live, rtol=1e-5, atol=1e-5 * float(jnp.abs(live).max())
  )
  bn1 = set(folded["resnet_v2/stage1_block1/bn1"])
  bn0 = set(folded["resnet_v2/stage1_block1/bn0"])
  assert bn0 == {FOLDED_SCALE, FOLDED_OFFSET}  # The residual stream's BN stays an affine.
  assert bn1 == ({FOLDED_OFFSET} if order == "bn_relu" else {FOLDED_SCALE, FOLDED_OFFSET})
