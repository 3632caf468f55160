"""Checkpoints: resume equality, corrupt-latest fallback, other-model refusal, load_trained.

One Trainer compiles the steps; the interrupted and resumed runs reuse its
compiled functions (same config, so the same programs).
"""

import json
import logging

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import checkpoint, checkpoint_manifest, data, steps, telemetry
from experiments.configs import quickstart
from experiments.train import Trainer

NUM_STEPS = 7
NUM_TEST = 40  # Eval batch 16 -> batches of 16, 16 and a padded 8.


def tiny_config() -> ml_collections.ConfigDict:
  """The quick-start smoke config with a ragged eval split, checkpoints and EMA."""
  config = quickstart.get_config("smoke")
  config.model.width = 0.125
  config.data.image_size = 8
  config.data.synthetic.update(num_train=64, num_test=NUM_TEST, image_size=8, channels=1)
  config.train.update(
    batch_size=16,
    eval_batch_size=16,
    num_steps=NUM_STEPS,
    checkpoint_every=3,
    keep_checkpoints=2,
    log_every=1,
    ema_decay=0.9,
  )
  config.optimizer.update(warmup_steps=2)
  return config


class Interrupt(Exception):
  pass


def train_rows(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    for key in telemetry.TIMING_FIELDS:  # Measured: they differ between two runs.
      row.pop(key, None)
  return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = tiny_config()
  full_dir = tmp_path_factory.mktemp("full")
  full = Trainer(config, full_dir)
  full_state, full_metrics = full.run()

  resumed_dir = tmp_path_factory.mktemp("resumed")
  first = Trainer(config, resumed_dir)
  calls = []

  def interrupted_step(state, batch):
    calls.append(1)
    if len(calls) == 6:  # Checkpoint at 3; step 4 logged; steps 5-6 lost.
      raise Interrupt
    return full.train_step(state, batch)

  first.train_step, first.eval_step = interrupted_step, full.eval_step
  with pytest.raises(Interrupt):
    first.run()
  rows_at_interrupt = [r["step"] for r in train_rows(resumed_dir)]
  second = Trainer(config, resumed_dir)
  second.train_step, second.eval_step = full.train_step, full.eval_step
  state, metrics = second.run()
  return dict(
    config=config,
    full=full,
    full_dir=full_dir,
    full_state=full_state,
    full_metrics=full_metrics,
    resumed_dir=resumed_dir,
    resumed_state=state,
    resumed_metrics=metrics,
    rows_at_interrupt=rows_at_interrupt,
  )


def test_interrupted_run_stopped_after_a_logged_step(runs):
  assert runs["rows_at_interrupt"] == [1, 2, 3, 4]


def test_resume_gives_the_same_final_state(runs):
  full, resumed = steps.fetch(runs["full_state"]), steps.fetch(runs["resumed_state"])
  assert int(full.step) == int(resumed.step) == NUM_STEPS
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_resume_gives_the_same_metrics(runs):
  full, resumed = runs["full_metrics"], runs["resumed_metrics"]
  assert set(full) == set(resumed)
  for key in full:
    if key.removeprefix("train/") not in telemetry.TIMING_FIELDS:
      np.testing.assert_allclose(resumed[key], full[key], rtol=1e-6, err_msg=key)
  assert train_rows(runs["resumed_dir"]) == train_rows(runs["full_dir"])  # Stale rows dropped.


def test_eval_counts_every_example_once(runs):
  """8 devices, eval batch 16, 40 examples: the padded last batch is masked out."""
  metrics = runs["full_metrics"]
  assert metrics["eval/count"] == NUM_TEST
  trainer = runs["full"]
  images = np.stack([trainer.test_source[i]["image"] for i in range(NUM_TEST)])
  labels = np.array([trainer.test_source[i]["label"] for i in range(NUM_TEST)])
  batch = next(data.eval_batches(trainer.test_source, runs["config"].data, global_batch_size=64))
  assert batch["mask"].sum() == NUM_TEST
  state = steps.fetch(runs["full_state"])
  logits, _ = trainer.experiment.model.apply(
    state.params, state.model_state, None, jnp.asarray(batch["image"]), is_training=False
  )
  correct = np.argmax(logits, -1)[:NUM_TEST] == batch["label"][:NUM_TEST]
  assert images.shape[0] == labels.shape[0] == NUM_TEST
  np.testing.assert_allclose(metrics["eval/accuracy"], correct.mean(), rtol=1e-6)
  assert "eval/ema_accuracy" in metrics


def test_checkpoints_kept_and_identity_stored(runs):
  ckpt = checkpoint.Checkpointer(runs["full_dir"], {"model_name": "nf_resnet"})
  assert ckpt.steps() == [6, 7]  # Every 3 steps and at the end, keep 2.
  meta = ckpt.read_meta(7)
  assert meta["model_name"] == "nf_resnet" and meta["step"] == 7
  assert meta["model"]["width"] == 0.125 and meta["model"]["num_classes"] == 10


def test_other_model_is_refused_without_touching_files(runs):
  workdir = runs["full_dir"]
  before = {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  config = tiny_config()
  config.model.width = 0.25
  with pytest.raises(checkpoint.CheckpointMismatchError, match="nf_resnet.*width=0.125.*0.25"):
    Trainer(config, workdir)
  assert {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_load_trained(runs):
  trained = checkpoint.load_trained(runs["full_dir"])
  assert trained.config.model.width == 0.125
  final = steps.fetch(runs["full_state"])
  jax.tree.map(np.testing.assert_array_equal, trained.params, final.params)
  model = hk.transform_with_state(trained.model_fn)
  logits, _ = model.apply(trained.params, trained.state, None, jnp.zeros((2, 8, 8, 1)), False)
  assert logits.shape == (2, 10)
  ema = checkpoint.load_trained(runs["full_dir"], use_ema=True)
  jax.tree.map(np.testing.assert_array_equal, ema.params, final.ema_params)


def test_trainer_checkpoints_carry_a_manifest(runs):
  directory = runs["full_dir"] / checkpoint.CHECKPOINT_DIR
  for step in (6, 7):
    assert (directory / str(step) / checkpoint_manifest.MANIFEST_FILE).is_file()
    assert checkpoint_manifest.verify_manifest(directory / str(step)) is None


def test_corrupt_latest_falls_back_to_previous(runs, caplog):
  """Run last: corrupts the newest checkpoint of the full run."""
  trainer = runs["full"]
  state_dir = trainer.checkpointer.directory / "7" / "state"
  files = [p for p in state_dir.rglob("*") if p.is_file()]
  assert files
  for path in files:
    path.write_bytes(b"corrupt")
  trainer.checkpointer = checkpoint.Checkpointer(
    runs["full_dir"], trainer.checkpointer.identity, keep=2
  )
  with caplog.at_level(logging.WARNING):
    state = trainer.initial_state()
  assert checkpoint.steps_of(state) == 6
  assert any("checkpoint 7 is unreadable" in r.getMessage() for r in caplog.records)
  # Set aside (not deleted) so that the resumed run can save step 7 again.
  assert trainer.checkpointer.steps() == [6]
  moved = list((runs["full_dir"] / checkpoint.UNREADABLE_DIR).iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["7"]


def test_load_trained_without_checkpoints_creates_nothing(tmp_path):
  (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps({"model_name": "nf_resnet"}))
  with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
    checkpoint.load_trained(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CONFIG_FILE]
