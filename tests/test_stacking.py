"""Stacked blocks: layout, checkpoint conversion, equality with the unrolled model, trace size."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfresnet as nf
from nfresnet.stacking import stack_params, stage_runs, unstack_params

X = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
TINY = dict(width=1 / 16, stem="cifar", skip_gain_init=1.0, stochdepth_rate=0.5)


def _model(stack: bool, depth: int = 50, **kwargs) -> hk.Transformed:
  kwargs = {**TINY, **kwargs}
  return hk.transform(
    lambda x, is_training: nf.NFResNet(5, depth, stack_blocks=stack, **kwargs)(x, is_training)
  )


def _random_params(model: hk.Transformed, seed: int = 0) -> hk.Params:
  """Parameters of ``model`` drawn in numpy (no compiled init): every gain and branch matters."""
  shapes = jax.eval_shape(lambda k: model.init(k, X, True), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    name = path[-1].key
    if name in ("gain", "skip_gain"):
      return 1.0 + 0.1 * noise
    return noise if name == "w" and leaf.ndim == 4 else 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def unrolled():
  model = _model(False)
  return model, _random_params(model)


def _train_and_eval(model: hk.Transformed, params: hk.Params, rng: jax.Array):
  """Training logits, gradients of their mean square, and evaluation logits (one jit)."""

  def loss(p):
    logits = model.apply(p, rng, X, True)
    return jnp.mean(jnp.square(logits)), logits

  @jax.jit
  def run(p):
    grads, logits = jax.grad(loss, has_aux=True)(p)
    return logits, grads, model.apply(p, None, X, False)

  return run(params)


@pytest.fixture(scope="module")
def both(unrolled):
  model, params = unrolled
  rng = jax.random.key(3)
  return _train_and_eval(model, params, rng), _train_and_eval(
    _model(True), stack_params(params), rng
  )


def test_stacked_layout_names_shapes_and_count():
  shapes = jax.eval_shape(
    hk.transform(lambda x: nf.NFResNet(1000, stack_blocks=True)(x, False)).init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
  )
  assert nf.count_params(shapes) == 25_557_048
  assert shapes["nf_resnet/stage3_blocks/conv1"]["w"].shape == (5, 3, 3, 256, 256)
  assert shapes["nf_resnet/stage3_blocks"]["skip_gain"].shape == (5,)
  assert shapes["nf_resnet/stage3_block1/conv_shortcut"]["w"].shape == (1, 1, 512, 1024)
  assert not any("stage3_block2" in path for path in shapes)


def test_stack_unstack_round_trip_is_exact(unrolled):
  _, params = unrolled
  stacked = stack_params(params)
  assert stacked["nf_resnet/stage2_blocks/conv0"]["w"].shape == (3, 1, 1, 32, 8)
  np.testing.assert_array_equal(
    stacked["nf_resnet/stage2_blocks/conv0"]["w"][1], params["nf_resnet/stage2_block3/conv0"]["w"]
  )
  back = unstack_params(stacked)
  assert set(back) == set(params)
  for path in params:
    for name in params[path]:
      np.testing.assert_array_equal(back[path][name], params[path][name])


def test_stacked_init_matches_unrolled_structure(unrolled):
  _, params = unrolled
  stacked = jax.eval_shape(lambda k: _model(True).init(k, X, True), jax.random.key(0))
  expected = jax.tree.map(jnp.shape, stack_params(params))
  assert jax.tree.map(lambda s: s.shape, stacked) == expected


def test_stacked_outputs_equal_unrolled_with_stochastic_depth(both):
  (want_train, _, want_eval), (got_train, _, got_eval) = both
  np.testing.assert_allclose(got_train, want_train, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_eval, want_eval, atol=1e-5, rtol=1e-5)
  # Stochastic depth really dropped branches: training and evaluation outputs differ.
  assert float(jnp.max(jnp.abs(want_eval - want_train))) > 1e-3


def test_stacked_gradients_equal_unrolled(both):
  (_, want, _), (_, got, _) = both
  want = stack_params(want)
  assert set(got) == set(want)
  for path in want:
    for name in want[path]:
      np.testing.assert_allclose(got[path][name], want[path][name], atol=1e-5, rtol=1e-4)
  assert float(jnp.max(jnp.abs(want["nf_resnet/stage3_blocks/conv1"]["w"]))) > 1e-4


def test_basic_blocks_stack_too():
  model, stacked_model = _model(False, 18), _model(True, 18)
  params = _random_params(model)
  rng = jax.random.key(5)
  want = jax.jit(lambda p: model.apply(p, rng, X, True))(params)
  got = jax.jit(lambda p: stacked_model.apply(p, rng, X, True))(stack_params(params))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _trace_size(stack: bool, depth: int) -> int:
  model = _model(stack, depth, stochdepth_rate=0.0)
  x = jax.ShapeDtypeStruct(X.shape, jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, True), x)
  jaxpr = jax.make_jaxpr(lambda p, x: model.apply(p, jax.random.key(0), x, True))(params, x)
  return len(jaxpr.jaxpr.eqns)


def test_traced_program_size_is_independent_of_depth():
  # Stages [3, 4, 6, 3] vs [3, 8, 36, 3] vs [50, 50, 50, 50]: one scanned block per stage.
  # (With stochastic depth on, the per-block keys add one key split per block.)
  stacked = {depth: _trace_size(True, depth) for depth in (50, 152, 600)}
  assert stacked[50] == stacked[152] == stacked[600]
  assert _trace_size(False, 152) > 2 * _trace_size(False, 50)


def test_stage_runs_split_transitions_and_reject_mismatched_blocks():
  _, _, specs = nf.resnet_specs(50)
  runs = stage_runs(specs)
  assert [len(rest) for _, rest in runs] == [2, 3, 5, 2]
  assert all(first.transition for first, _ in runs)
  bad = list(specs)
  bad[2] = bad[2].__class__(**{**bad[2].__dict__, "stride": 2})
  with pytest.raises(ValueError, match="stage1_block3 cannot be stacked"):
    stage_runs(bad)


def test_stack_params_rejects_gaps_in_block_numbers(unrolled):
  _, params = unrolled
  broken = {k: v for k, v in params.items() if not k.startswith("nf_resnet/stage2_block3")}
  with pytest.raises(ValueError, match="not numbered 2..n"):
    stack_params(broken)
