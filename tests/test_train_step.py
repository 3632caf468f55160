"""Train step: 1 vs 8 devices, bf16 keeps float32 state, BN statistics, NaN guard."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import builder, steps
from experiments.configs import quickstart
from experiments.train import GUARDED_METRICS, NonFiniteError, Trainer

BATCH = 16
SIZE = 8
NUM_STEPS = 5


def tiny_config(model: str = "nf") -> ml_collections.ConfigDict:
  """The quick-start config's smoke form, at this file's batch size and length."""
  config = quickstart.get_config(f"model={model},smoke")
  config.model.width = 0.125
  config.optimizer.warmup_steps = 2
  config.train.batch_size = BATCH
  config.train.num_steps = NUM_STEPS
  config.train.ema_decay = 0.9
  return config


def batches(num: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=(BATCH,)).astype(np.int32),
    }
    for _ in range(num)
  ]


def build(config, devices, compute_dtype="float32") -> builder.Experiment:
  config.train.compute_dtype = compute_dtype
  return builder.build(config, 10, 1000, devices=devices)


def run_steps(config, devices, data, compute_dtype="float32"):
  """Returns (per-step metrics, final state) of the jitted shard_map step on ``devices``."""
  experiment = build(config, devices, compute_dtype)
  state = experiment.init_state((SIZE, SIZE, 1))
  history = []
  for batch in data:
    state, metrics = experiment.train_step(state, experiment.shard_batch(batch))
    history.append(steps.fetch(metrics))
  return history, state, experiment.train_step, experiment.mesh


@pytest.fixture(scope="module")
def nf_runs():
  config = tiny_config()
  data = batches(NUM_STEPS)
  return {n: run_steps(config, jax.devices()[:n], data) for n in (1, 8)}


def test_eight_fake_devices_available():
  assert jax.device_count() == 8


def test_nf_loss_sequence_same_on_1_and_8_devices(nf_runs):
  one = np.array([m["loss"] for m in nf_runs[1][0]])
  eight = np.array([m["loss"] for m in nf_runs[8][0]])
  assert one.shape == (NUM_STEPS,)
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  assert not np.allclose(one, one[0])  # Training moves the loss.


def test_nf_params_same_on_1_and_8_devices(nf_runs):
  one = steps.fetch(nf_runs[1][1].params)
  eight = steps.fetch(nf_runs[8][1].params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), one, eight)


def test_step_counter_and_learning_rate(nf_runs):
  history, state, _, _ = nf_runs[8]
  assert int(steps.fetch(state.step)) == NUM_STEPS
  lrs = [m["learning_rate"] for m in history]
  peak = 0.4 * BATCH / 256
  np.testing.assert_allclose(lrs[:3], [0.0, peak / 2, peak], rtol=1e-6)


def test_ema_follows_params(nf_runs):
  _, state, _, _ = nf_runs[1]
  params, ema = steps.fetch(state.params), steps.fetch(state.ema_params)
  diff = jax.tree.map(lambda p, e: float(np.max(np.abs(p - e))), params, ema)
  assert max(jax.tree.leaves(diff)) > 0  # EMA lags behind the parameters.
  assert jax.tree.structure(params) == jax.tree.structure(ema)


@pytest.mark.parametrize("step", [0, 1, 10, 1000])
def test_ema_decay_warms_up_as_the_reference(step):
  """The reference's EMA decay: min(decay, (1 + t) / (10 + t)) after t completed steps."""
  expected = {0: 0.1, 1: 2 / 11, 10: 11 / 20, 1000: 1001 / 1010}[step]
  np.testing.assert_allclose(steps.ema_decay_at(step, 0.9999), expected, rtol=1e-6)
  np.testing.assert_allclose(steps.ema_decay_at(step, 0.5), min(0.5, expected), rtol=1e-6)
  np.testing.assert_allclose(steps.ema_decay_at(step, 0.9999, warmup=False), 0.9999, rtol=1e-7)


def test_ema_update_averages_floats_and_keeps_counters():
  ema = {"bn": {"mean": jnp.zeros(2), "counter": jnp.int32(3)}}
  new = {"bn": {"mean": jnp.ones(2), "counter": jnp.int32(4)}}
  out = steps.ema_update(ema, new, jnp.float32(0.25))
  np.testing.assert_allclose(out["bn"]["mean"], [0.75, 0.75])
  assert int(out["bn"]["counter"]) == 4


def test_non_finite_batch_gives_non_finite_guarded_metrics(nf_runs):
  """The metrics the loop's NaN guard checks really carry a NaN from the step."""
  _, state, train_step, mesh = nf_runs[1]
  state = jax.tree.map(lambda x: x.copy(), state)  # The step donates its input.
  batch = batches(1)[0]
  batch["image"][0, 0, 0, 0] = np.nan
  _, metrics = train_step(state, steps.global_batch(batch, mesh))
  metrics = steps.fetch(metrics)
  assert all(np.isnan(metrics[name]) for name in GUARDED_METRICS)


def test_bf16_keeps_float32_state():
  """bf16 compute: parameters, optimizer state and EMA stay float32 (checked by shapes)."""
  experiment = build(tiny_config(), jax.devices()[:2], compute_dtype="bfloat16")
  state = experiment.abstract_state((SIZE, SIZE, 1))
  sharded = steps.batch_sharding(experiment.mesh)
  batch = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded), batches(1)[0]
  )
  new_state, metrics = jax.eval_shape(experiment.train_step, state, batch)
  floats = [
    leaf.dtype
    for tree in (new_state.params, new_state.opt_state, new_state.ema_params)
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  assert len(floats) > 3 * 8 and set(floats) == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32
  # The convolutions themselves run in bf16.
  jaxpr = str(jax.make_jaxpr(experiment.train_step)(state, batch))
  assert "conv_general_dilated" in jaxpr and "bf16[" in jaxpr


def test_cross_replica_bn_on_8_devices_matches_1_device():
  """With cross-replica statistics, BN over 8 shards of a batch equals BN over the whole batch."""
  config = tiny_config("bn")
  config.train.cross_replica_bn = True
  data = batches(2)
  one, _, _, _ = run_steps(config, jax.devices()[:1], data)
  eight, state, _, _ = run_steps(config, jax.devices()[:8], data)
  np.testing.assert_allclose([m["loss"] for m in eight], [m["loss"] for m in one], rtol=1e-5)
  means = [v["average"] for k, v in steps.fetch(state.model_state).items() if "mean_ema" in k]
  assert len(means) == 2 * 8 + 1 and all(np.all(np.isfinite(m)) for m in means)
  # The EMA averages the BatchNorm statistics along with the weights (reference behaviour).
  ema_state = steps.fetch(state.ema_model_state)
  assert jax.tree.structure(ema_state) == jax.tree.structure(steps.fetch(state.model_state))
  ema_means = [v["average"] for k, v in ema_state.items() if "mean_ema" in k]
  assert any(not np.allclose(e, m) for e, m in zip(ema_means, means, strict=True))


def test_non_finite_loss_stops_training(tmp_path):
  """A NaN loss raises NonFiniteError; the last good checkpoint stays, nothing bad is saved."""
  config = tiny_config()
  config.data.image_size = SIZE
  config.data.synthetic.image_size = SIZE
  config.data.synthetic.channels = 1
  config.train.eval_batch_size = BATCH
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  trainer = Trainer(config, tmp_path)
  losses = iter([1.0, float("nan"), 1.0])  # Step 2's loss is NaN.

  def fake_step(state, batch):  # Avoids compiling: the loop logic is under test.
    del batch
    metrics = {"loss": next(losses), "grad_norm": 1.0, "param_norm": 1.0, "accuracy": 0.5}
    return state._replace(step=state.step + 1), jax.tree.map(jnp.asarray, metrics)

  trainer.train_step = fake_step
  with pytest.raises(NonFiniteError, match=r"non-finite loss at step 2 .*step 1 kept"):
    trainer.run()
  assert trainer.checkpointer.steps() == [1]
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 1 and '"step": 1' in rows[0]
