"""Optimizer pieces: masks, derived schedule values, Nesterov flag, AGC exclusion, loss."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import nfresnet
from experiments import builder, models, optim, steps
from experiments.configs import ConfigError, base_config, quickstart
from experiments.train_state import INIT_COMPILER_OPTIONS


def init_params(model_name: str) -> hk.Params:
  config = quickstart.get_config("smoke")
  config.model_name = model_name
  kept = {k: v for k, v in config.model.items() if k != "stack_blocks"}  # NF-ResNet only.
  config.model = ml_collections.ConfigDict(kept)
  model = models.build_model(config, 10)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), True))[0]


def flat_mask(params, predicate) -> dict[str, bool]:
  mask = optim.param_mask(params, predicate)
  return {f"{m}/{n}": bool(v) for m, n, v in hk.data_structures.traverse(mask)}


@pytest.mark.parametrize("model_name", ["nf_resnet", "resnet_v2", "skipinit", "fixup"])
def test_weight_decay_mask_is_exactly_the_weights(model_name):
  mask = flat_mask(init_params(model_name), optim.is_decayed)
  decayed = {k for k, v in mask.items() if v}
  assert decayed == {k for k in mask if k.endswith("/w")}
  # 17 convs in a ResNet-18 body (+3 shortcuts) and the classifier.
  assert len(decayed) == 17 + 3 + 1
  excluded_names = {k.rsplit("/", 1)[1] for k, v in mask.items() if not v}
  expected = {
    "nf_resnet": {"gain", "bias", "skip_gain", "b"},
    "resnet_v2": {"scale", "offset", "b"},
    "skipinit": {"bias", "skip_gain", "b"},
    "fixup": {"bias0a", "bias0b", "bias1a", "bias_out", "scale", "stem_bias", "head_bias", "b"},
  }[model_name]
  assert excluded_names == expected


def test_agc_mask_excludes_only_the_classifier():
  mask = flat_mask(init_params("nf_resnet"), optim.is_clipped)
  excluded = sorted(k for k, v in mask.items() if not v)
  assert excluded == ["nf_resnet/classifier/b", "nf_resnet/classifier/w"]
  assert sum(mask.values()) == len(mask) - 2


def schedule_config(**opt) -> ml_collections.ConfigDict:
  config = base_config()
  config.train.batch_size = 100
  config.train.num_epochs = 2.0
  config.optimizer.base_lr = 0.1
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.update(opt)
  return config


def test_derived_values_are_computed_from_the_config_at_run_time():
  config = schedule_config()
  assert optim.make_schedule(config, 1000) == optim.Schedule(20, 5, 0.1 * 100 / 256, 0.0)
  config.train.batch_size = 50  # A command-line override: every derived value follows.
  assert optim.make_schedule(config, 1000) == optim.Schedule(40, 10, 0.1 * 50 / 256, 0.0)
  config.train.num_steps = 7
  config.optimizer.scale_by_batch = False
  assert optim.make_schedule(config, 1000) == optim.Schedule(7, 7, 0.1, 0.0)
  config.optimizer.warmup_fraction = 0.25  # Of the 7 steps: 2, whatever the epochs.
  assert optim.make_schedule(config, 1000).warmup_steps == 2
  config.train.eval_every_epochs = 0.5  # 500 examples at batch 50: every 10 steps.
  assert optim.make_schedule(config, 1000).eval_every == 10
  config.train.batch_size = 100
  assert optim.make_schedule(config, 1000).eval_every == 5


def test_warmup_then_cosine_values():
  sched = optim.Schedule(total_steps=15, warmup_steps=5, peak_lr=0.4, end_lr=0.0)
  lr = optim.learning_rate_fn(sched)
  values = [float(lr(s)) for s in (0, 1, 5, 10, 15, 20)]
  np.testing.assert_allclose(values, [0.0, 0.08, 0.4, 0.2, 0.0, 0.0], atol=1e-7)
  halfway = float(lr(5 + 10 // 3))  # Cosine: peak * (1 + cos(pi * t)) / 2.
  np.testing.assert_allclose(halfway, 0.4 * (1 + math.cos(math.pi * 3 / 10)) / 2, rtol=1e-6)


def test_zero_step_warmup_starts_at_peak_without_nan():
  lr = optim.learning_rate_fn(optim.Schedule(10, 0, 0.4, 0.004))
  values = np.array([float(lr(s)) for s in range(11)])
  assert np.all(np.isfinite(values))
  np.testing.assert_allclose(values[[0, 5, 10]], [0.4, 0.202, 0.004], rtol=1e-5)
  config = schedule_config(warmup_steps=0)
  assert optim.make_schedule(config, 1000).warmup_steps == 0


def built_optimizer(lr: float = 1.0, **opt) -> optax.GradientTransformation:
  """The builder's optimizer for the quick-start smoke config at a constant learning rate."""
  config = quickstart.get_config("smoke")
  config.optimizer.update(scale_by_batch=False, base_lr=lr, end_lr=lr, warmup_steps=0, **opt)
  return builder.build(config, 10, 64).optimizer


def sgd_updates(nesterov: bool, grads: list[float], momentum=0.9, lr=1.0):
  tx = built_optimizer(lr, nesterov=nesterov, momentum=momentum, weight_decay=0.0)
  params = {"m": {"w": jnp.zeros(())}}
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update({"m": {"w": jnp.asarray(g)}}, state, params)
    out.append(float(updates["m"]["w"]))
  return out


def test_nesterov_flag_is_honoured():
  grads = [1.0, 2.0, 3.0]
  # Heavy ball: m_t = g_t + 0.9 m_{t-1}; update -m_t.
  np.testing.assert_allclose(sgd_updates(False, grads), [-1.0, -2.9, -5.61], rtol=1e-6)
  # Nesterov: update -(g_t + 0.9 m_t).
  np.testing.assert_allclose(sgd_updates(True, grads), [-1.9, -4.61, -8.049], rtol=1e-6)


def test_coupled_weight_decay_only_on_masked_params():
  tx = built_optimizer(momentum=0.0, weight_decay=0.1, nesterov=False)
  params = {"net/conv": {"w": jnp.full((2,), 2.0), "gain": jnp.full((2,), 2.0)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["net/conv"]["w"], [-0.2, -0.2])
  np.testing.assert_allclose(updates["net/conv"]["gain"], [0.0, 0.0])


def test_agc_clips_body_but_not_classifier():
  tx = built_optimizer(momentum=0.0, weight_decay=0.0, agc_clip=0.01, agc_eps=1e-3)
  params = {"net/conv": {"w": jnp.ones((1, 1, 1, 2))}, "net/classifier": {"w": jnp.ones((1, 2))}}
  grads = jax.tree.map(lambda p: 100.0 * p, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Unit-wise (per output channel) norm of a 1-element unit is 1: clipped to 0.01 * 1.
  np.testing.assert_allclose(updates["net/conv"]["w"].ravel(), [-0.01, -0.01], rtol=1e-5)
  np.testing.assert_allclose(updates["net/classifier"]["w"].ravel(), [-100.0, -100.0])


def test_adamw_option_steps():
  tx = built_optimizer(1e-3, name="adamw", weight_decay=0.1)
  params = {"net/conv": {"w": jnp.ones((2,)), "bias": jnp.ones((2,))}}
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  # Adam's first step is -lr * sign(g); decoupled decay adds -lr * wd * w on "w" only.
  np.testing.assert_allclose(updates["net/conv"]["w"], [-1e-3 * 1.1] * 2, rtol=1e-4)
  np.testing.assert_allclose(updates["net/conv"]["bias"], [-1e-3] * 2, rtol=1e-4)


def test_unknown_optimizer_names_the_allowed_ones():
  with pytest.raises(ConfigError, match="optimizer.name='lamb' is not allowed: one of sgd, adamw"):
    built_optimizer(name="lamb")


def test_label_smoothing_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0]], jnp.bfloat16)
  log_p = jax.nn.log_softmax(jnp.array([[2.0, 0.0, -1.0]]))[0]
  eps = 0.3
  expected = -((1 - eps) * log_p[0] + eps / 3 * jnp.sum(log_p))
  loss = steps.cross_entropy(logits, jnp.array([0]), eps)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, [expected], rtol=1e-6)
  # Soft targets (MixUp) take the same path; uniform logits give log K whatever the targets.
  soft = steps.cross_entropy(jnp.zeros((1, 3)), jnp.array([[0.5, 0.5, 0.0]]), 0.1)
  np.testing.assert_allclose(soft, [math.log(3)], rtol=1e-6)
  np.testing.assert_allclose(
    optax.softmax_cross_entropy_with_integer_labels(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0])),
    steps.cross_entropy(logits, jnp.array([0]), 0.0),
    rtol=1e-6,
  )


def test_agc_clips_stacked_blocks_as_the_unrolled_model():
  """AGC on ``stack_blocks=True`` parameters gives the unrolled model's updates, block by block."""
  config = quickstart.get_config("smoke")
  config.model.update(depth=34, stem="cifar")  # Stages of 3, 4, 6, 3 blocks: 12 stacked.
  model = models.build_model(config, 10)
  init = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), True)[0])
  params = init.lower().compile(INIT_COMPILER_OPTIONS)()
  # Stage 3's non-transition blocks (5 of them, stacked into one module) and the classifier.
  keep = lambda name: "stage3_block" in name and not name.split("/")[1].endswith("block1")
  unrolled = {k: v for k, v in params.items() if keep(k) or k.endswith("classifier")}
  keys = iter(jax.random.split(jax.random.key(1), 1000))
  # Gradients between 0.001x and 0.1x the parameters: some units are clipped, others not.
  grads = jax.tree.map(
    lambda p: (
      p * jnp.exp(jax.random.uniform(next(keys), p.shape, minval=-7, maxval=-2.3))
      + 1e-3 * jax.random.normal(next(keys), p.shape)
    ),
    unrolled,
  )
  tx = built_optimizer(momentum=0.0, weight_decay=0.0, agc_clip=0.01, agc_eps=1e-3)

  @jax.jit
  def updates(params, g):
    return tx.update(g, tx.init(params), params)[0]

  expected = updates(unrolled, grads)
  stacked = nfresnet.stack_params(unrolled)
  assert any(nfresnet.is_stacked_module(name) for name in stacked)
  got = nfresnet.unstack_params(updates(stacked, nfresnet.stack_params(grads)))
  assert got.keys() == expected.keys()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), got, expected)
  clipped = [
    float(jnp.max(jnp.abs(u + g))) > 1e-6
    for u, g in zip(jax.tree.leaves(expected), jax.tree.leaves(grads), strict=True)
  ]
  assert any(clipped) and not all(clipped)  # The check covers both regimes.
  # optax's AGC alone takes the unit-wise norms over the stacking axis and differs.
  plain = optax.adaptive_grad_clip(0.01, eps=1e-3)
  wrong = jax.jit(lambda g, p: plain.update(g, optax.EmptyState(), p)[0])(
    nfresnet.stack_params(grads), stacked
  )
  wrong = nfresnet.unstack_params(jax.tree.map(lambda u: -u, wrong))
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), wrong, expected)
  assert max(jax.tree.leaves(diffs)) > 1e-6
