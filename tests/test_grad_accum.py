"""Gradient accumulation (``train.grad_accum_steps``): one update from k micro-batches.

An NF model (no BatchNorm, no dropout, no stochastic depth) takes the same step as
without accumulation, on one device and on two; a BN model runs but normalizes
every micro-batch with its own statistics, so its moving averages differ.
"""

import jax
import numpy as np
import pytest

from experiments import builder, steps
from experiments.configs import ConfigError, quickstart

BATCH = 32
SIZE = 8


def tiny_config(model: str, grad_accum_steps: int):
  """The quick-start smoke config at 8 px, batch 32, full learning rate from step 0."""
  config = quickstart.get_config(f"model={model},smoke")
  config.model.width = 0.0625
  config.train.batch_size = BATCH
  config.train.num_steps = 10
  config.train.grad_accum_steps = grad_accum_steps
  config.optimizer.warmup_steps = 0  # The first step's learning rate is the peak, not 0.
  return config


def one_batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "image": rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype(np.float32),
    "label": rng.integers(0, 10, size=(BATCH,)).astype(np.int32),
  }


def one_step(model: str, grad_accum_steps: int, num_devices: int):
  """(state before, state after, metrics) of one train step, fetched to the host."""
  config = tiny_config(model, grad_accum_steps)
  experiment = builder.build(config, 10, 1000, devices=jax.devices()[:num_devices])
  state = experiment.init_state((SIZE, SIZE, 1))
  before = steps.fetch(state)  # The step donates ``state``.
  after, metrics = experiment.train_step(state, experiment.shard_batch(one_batch()))
  return before, steps.fetch(after), steps.fetch(metrics)


@pytest.fixture(scope="module")
def nf_steps():
  # (accumulation steps, devices): per-device micro-batches of 32, 8 and 8 examples.
  return {key: one_step("nf", *key) for key in ((1, 1), (4, 1), (2, 2))}


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), actual, expected
  )


@pytest.mark.parametrize("key", [(4, 1), (2, 2)], ids=["4x8_on_1_device", "2x8_on_2_devices"])
def test_nf_step_with_accumulation_equals_full_batch_step(nf_steps, key):
  _, reference, ref_metrics = nf_steps[(1, 1)]
  _, accumulated, metrics = nf_steps[key]
  for name in ("loss", "accuracy", "grad_norm", "update_norm", "param_norm"):
    np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, err_msg=name)
  assert_trees_close(accumulated.params, reference.params)
  assert_trees_close(accumulated.opt_state, reference.opt_state)
  assert int(accumulated.step) == int(reference.step) == 1  # One optimizer update.


def test_nf_reference_step_moves_the_parameters(nf_steps):
  """The equality above is not that of a step that changes nothing."""
  before, after, metrics = nf_steps[(1, 1)]
  assert metrics["update_norm"] > 0
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), before.params, after.params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_bn_step_runs_with_per_micro_batch_statistics():
  """BN with accumulation: statistics of each micro-batch, moving averages updated k times.

  The step runs and its loss is finite, but it is a different step from the full-batch
  one: every micro-batch is normalized with its own mean and variance (as on more
  devices without cross-replica BN), so the gradients and the moving averages after
  the step differ from ``grad_accum_steps=1``.
  """
  _, full, full_metrics = one_step("bn", 1, 1)
  _, micro, micro_metrics = one_step("bn", 4, 1)
  assert np.isfinite(micro_metrics["loss"]) and np.isfinite(micro_metrics["grad_norm"])
  assert jax.tree.structure(micro.model_state) == jax.tree.structure(full.model_state)
  averages = [
    (full.model_state[k]["average"], micro.model_state[k]["average"])
    for k in full.model_state
    if k.endswith("mean_ema")
  ]
  assert averages and any(not np.allclose(a, b, rtol=1e-4) for a, b in averages)
  counters = {int(v["counter"]) for v in micro.model_state.values()}
  assert counters == {4} and {int(v["counter"]) for v in full.model_state.values()} == {1}
  # The zero-initialized classifier gives both the loss log(10); its gradient differs.
  assert not np.isclose(micro_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-4)


def test_grad_accum_steps_must_divide_the_per_device_batch():
  config = tiny_config("nf", 3)
  config.train.batch_size = 64
  message = (
    r"train.grad_accum_steps=3 is not allowed: a divisor of the per-device batch 8 "
    r"\(train.batch_size=64 over 8 devices\)"
  )
  with pytest.raises(ConfigError, match=message):
    builder.check_config(config, 8)
  with pytest.raises(
    ConfigError, match=r"per-device batch 64 \(train.batch_size=64 over 1 device\)"
  ):
    builder.check_config(config, 1)
  config.train.grad_accum_steps = 4
  builder.check_config(config, 8)
  builder.check_config(config, 16)  # A per-device batch of 4.
  config.train.grad_accum_steps = 0
  with pytest.raises(ConfigError, match="train.grad_accum_steps=0 is not allowed: an integer > 0"):
    builder.check_config(config, 1)


def test_micro_batches_split_in_order():
  batch = {"image": np.arange(24).reshape(6, 2, 2), "label": np.arange(6)}
  split = steps.micro_batches(batch, 3)
  assert split["image"].shape == (3, 2, 2, 2) and split["label"].tolist() == [
    [0, 1],
    [2, 3],
    [4, 5],
  ]
  with pytest.raises(ValueError, match="a batch of 6 does not split into 4 micro-batches"):
    steps.micro_batches(batch, 4)
