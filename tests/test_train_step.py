"""Train step: 1 vs 8 devices, bf16 keeps float32 state, BN statistics, NaN guard."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import models, optim, steps
from experiments.configs import base_config
from experiments.train import GUARDED_METRICS, NonFiniteError, Trainer
from experiments.train_state import create_train_state, init_train_state

BATCH = 16
SIZE = 8
NUM_STEPS = 5


def tiny_config(model_name: str = "nf_resnet") -> ml_collections.ConfigDict:
  config = base_config()
  config.model_name = model_name
  config.model = ml_collections.ConfigDict({"depth": 18, "width": 0.125, "stem": "cifar"})
  config.optimizer.warmup_steps = 2
  config.optimizer.base_lr = 0.4
  config.train.batch_size = BATCH
  config.train.num_steps = NUM_STEPS
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


def run_steps(config, devices, data, compute_dtype=jnp.float32):
  """Returns (per-step metrics, final state) of the jitted shard_map step on ``devices``."""
  model = models.build_model(config, 10, steps.AXIS)
  schedule = optim.make_schedule(config, 1000)
  lr_fn = optim.learning_rate_fn(schedule)
  optimizer = optim.build_optimizer(config.optimizer, lr_fn)
  mesh = steps.make_mesh(devices)
  sample = jnp.zeros((1, SIZE, SIZE, 1))
  init_model = models.build_model(config, 10)  # Outside shard_map: no replica axis.
  state = create_train_state(
    init_model, optimizer, 0, sample, use_ema=True, sharding=steps.replicated_sharding(mesh)
  )
  body = steps.train_step_body(
    model,
    optimizer,
    lr_fn,
    label_smoothing=0.1,
    compute_dtype=compute_dtype,
    ema_decay=0.9,
  )
  train_step = steps.make_train_step(body, mesh)
  history = []
  for batch in data:
    state, metrics = train_step(state, steps.global_batch(batch, mesh))
    history.append(steps.fetch(metrics))
  return history, state, train_step, mesh


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
  config = tiny_config()
  model = models.build_model(config, 10, steps.AXIS)
  lr_fn = optim.learning_rate_fn(optim.make_schedule(config, 1000))
  optimizer = optim.build_optimizer(config.optimizer, lr_fn)
  mesh = steps.make_mesh(jax.devices()[:2])
  state = jax.eval_shape(
    lambda: init_train_state(model, optimizer, 0, jnp.zeros((1, SIZE, SIZE, 1)), use_ema=True)
  )
  replicated = steps.replicated_sharding(mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
  body = steps.train_step_body(
    model, optimizer, lr_fn, label_smoothing=0.0, compute_dtype=jnp.bfloat16, ema_decay=0.9
  )
  sharded = steps.batch_sharding(mesh)
  batch = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded), batches(1)[0]
  )
  new_state, metrics = jax.eval_shape(steps.shard(body, mesh, out_state=True), state, batch)
  floats = [
    leaf.dtype
    for tree in (new_state.params, new_state.opt_state, new_state.ema_params)
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  assert len(floats) > 3 * 8 and set(floats) == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32
  # The convolutions themselves run in bf16.
  jaxpr = str(jax.make_jaxpr(steps.shard(body, mesh, out_state=True))(state, batch))
  assert "conv_general_dilated" in jaxpr and "bf16[" in jaxpr


def test_cross_replica_bn_on_8_devices_matches_1_device():
  """With cross-replica statistics, BN over 8 shards of a batch equals BN over the whole batch."""
  config = tiny_config("resnet_v2")
  config.train.cross_replica_bn = True
  data = batches(2)
  one, _, _, _ = run_steps(config, jax.devices()[:1], data)
  eight, state, _, _ = run_steps(config, jax.devices()[:8], data)
  np.testing.assert_allclose([m["loss"] for m in eight], [m["loss"] for m in one], rtol=1e-5)
  means = [v["average"] for k, v in steps.fetch(state.model_state).items() if "mean_ema" in k]
  assert len(means) == 2 * 8 + 1 and all(np.all(np.isfinite(m)) for m in means)


def test_non_finite_loss_stops_training(tmp_path):
  """A NaN loss raises NonFiniteError; the last good checkpoint stays, nothing bad is saved."""
  config = tiny_config()
  config.data.name = "synthetic"
  config.data.image_size = SIZE
  config.data.synthetic.image_size = SIZE
  config.data.synthetic.channels = 1
  config.train.eval_batch_size = BATCH
  config.train.progress_bar = False
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
