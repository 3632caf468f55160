"""Preemption-safe stops, background checkpoint writes and time-based saves.

One Trainer compiles the steps of the quick-start smoke config (``CLI_ARGS`` gives
the command line of the same config); the other in-process runs reuse its compiled
functions. The command-line test runs ``experiments.main`` twice: SIGTERM'd mid-run,
then rerun to the end.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental import multihost_utils

from experiments import checkpoint, checkpoint_manifest, cli, steps, telemetry
from experiments.configs import quickstart
from experiments.logger import DONE_FILE
from experiments.train import Trainer, TrainingInterrupted
from experiments.train_state import TrainState

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 20
STOP_AT = 5
CLI_ARGS = [
  "--config=experiments/configs/quickstart.py:smoke",
  f"--config.train.num_steps={NUM_STEPS}",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=0",
]


def smoke_config():
  """The config ``CLI_ARGS`` describes: saves only at the end (and when stopped)."""
  config = quickstart.get_config("smoke")
  config.train.update(num_steps=NUM_STEPS, log_every=1, checkpoint_every=0)
  return config


def train_rows(workdir: pathlib.Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    for key in telemetry.TIMING_FIELDS:  # Measured: they differ between two runs.
      row.pop(key, None)
  return rows


def checkpoint_dirs(workdir: pathlib.Path) -> dict[int, pathlib.Path]:
  folder = workdir / checkpoint.CHECKPOINT_DIR
  return {int(p.name): p for p in folder.iterdir() if p.name.isdigit()}


def assert_manifests_valid(workdir: pathlib.Path) -> None:
  for step, path in checkpoint_dirs(workdir).items():
    assert (path / checkpoint_manifest.MANIFEST_FILE).is_file(), step
    assert checkpoint_manifest.verify_manifest(path) is None, step


def trainer_like(full: Trainer, workdir: pathlib.Path, config=None) -> Trainer:
  trainer = Trainer(config or smoke_config(), workdir)
  trainer.train_step, trainer.eval_step = full.train_step, full.eval_step
  return trainer


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """The uninterrupted run: (trainer, workdir, final state, final metrics)."""
  workdir = tmp_path_factory.mktemp("full")
  trainer = Trainer(smoke_config(), workdir)
  state, metrics = trainer.run()
  return trainer, workdir, steps.fetch(state), metrics


@pytest.fixture(scope="module")
def stopped(full, tmp_path_factory):
  """A run SIGTERM'd during step ``STOP_AT``, then the same workdir rerun to the end."""
  workdir = tmp_path_factory.mktemp("stopped")
  first = trainer_like(full[0], workdir)
  calls = []

  def step_then_signal(state, batch):
    calls.append(1)
    if len(calls) == STOP_AT:
      os.kill(os.getpid(), signal.SIGTERM)  # The loop's handler only sets a flag.
    return full[0].train_step(state, batch)

  first.train_step = step_then_signal
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(TrainingInterrupted) as info:
    first.run()
  after_stop = dict(
    steps=sorted(checkpoint_dirs(workdir)),
    done=(workdir / DONE_FILE).exists(),
    rows=[row["step"] for row in train_rows(workdir)],
    handler_restored=signal.getsignal(signal.SIGTERM) == before,
  )
  assert_manifests_valid(workdir)
  state, metrics = trainer_like(full[0], workdir).run()
  return dict(
    error=info.value,
    after_stop=after_stop,
    workdir=workdir,
    state=steps.fetch(state),
    metrics=metrics,
  )


def test_sigterm_stops_at_the_step_boundary_with_a_checkpoint(stopped):
  error, after = stopped["error"], stopped["after_stop"]
  assert isinstance(error, cli.Interrupted) and error.signal == "SIGTERM"
  assert error.step == STOP_AT
  assert str(error) == f"interrupted by SIGTERM at step {STOP_AT}: checkpoint saved"
  assert after["steps"] == [STOP_AT] and not after["done"]
  assert after["rows"] == list(range(1, STOP_AT + 1))
  assert after["handler_restored"]  # The loop's handler is only there while it runs.


def test_resumed_run_equals_the_uninterrupted_one(full, stopped):
  _, full_dir, full_state, full_metrics = full
  assert int(stopped["state"].step) == int(full_state.step) == NUM_STEPS
  for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(stopped["state"]), strict=True):
    np.testing.assert_array_equal(b, a)
  resumed = stopped["metrics"]
  assert set(resumed) == set(full_metrics)
  for key in full_metrics:
    if key.removeprefix("train/") not in telemetry.TIMING_FIELDS:
      assert resumed[key] == full_metrics[key], key
  assert train_rows(stopped["workdir"]) == train_rows(full_dir)
  assert (stopped["workdir"] / DONE_FILE).is_file()
  assert sorted(checkpoint_dirs(stopped["workdir"])) == [STOP_AT, NUM_STEPS]
  assert_manifests_valid(stopped["workdir"])


def test_command_line_sigterm_exits_5_and_the_rerun_resumes(full, tmp_path):
  """A real SIGTERM from outside: one ``error:`` line, exit 5; the rerun completes the run."""
  _, full_dir, _, full_metrics = full
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "experiments.main", *CLI_ARGS, f"--workdir={workdir}"]
  env = dict(os.environ)  # conftest's 8 fake CPU devices: the programs of the `full` run.
  # The rerun loads the programs the first run compiled (about 25 s less on 2 CPU cores).
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  proc = subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 240
  while proc.poll() is None and time.monotonic() < deadline:
    if metrics_file.is_file() and metrics_file.read_text().strip():
      proc.send_signal(signal.SIGTERM)  # Step 1 is logged: the loop is running.
      break
    time.sleep(0.01)
  _, stderr = proc.communicate(timeout=240)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert proc.returncode == cli.INTERRUPTED, stderr[-3000:]
  assert len(lines) == 1, stderr[-3000:]
  prefix, suffix = (
    "error: interrupted by SIGTERM at step ",
    (": checkpoint saved; rerun the same command to resume"),
  )
  assert lines[0].startswith(prefix) and lines[0].endswith(suffix), lines[0]
  stop_step = int(lines[0][len(prefix) : -len(suffix)])
  assert 1 <= stop_step < NUM_STEPS
  assert sorted(checkpoint_dirs(workdir)) == [stop_step]
  assert not (workdir / DONE_FILE).exists()
  assert_manifests_valid(workdir)

  again = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming from the checkpoint of step {stop_step} of {NUM_STEPS}" in again.stdout
  done = json.loads((workdir / DONE_FILE).read_text())
  assert done["step"] == NUM_STEPS
  for key, value in done.items():
    if key.startswith("eval/"):
      np.testing.assert_allclose(value, full_metrics[key], rtol=1e-6, err_msg=key)
  # The final save is written in the background; the process exits right after it.
  assert sorted(checkpoint_dirs(workdir)) == [stop_step, NUM_STEPS]
  assert_manifests_valid(workdir)
  got, expected = train_rows(workdir), train_rows(full_dir)
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  for a, b in zip(got, expected, strict=True):
    assert set(a) == set(b)
    for key, value in b.items():
      if isinstance(value, float):
        np.testing.assert_allclose(a[key], value, rtol=1e-6, err_msg=f"{key}, step {b['step']}")
      else:
        assert a[key] == value, key


def test_time_interval_saves_beside_the_step_interval(full, tmp_path):
  """A fake clock 10 minutes per step, a save every 25 minutes and every 7 steps."""
  config = smoke_config()
  config.train.update(checkpoint_every=7, checkpoint_every_minutes=25.0, keep_checkpoints=20)
  trainer = trainer_like(full[0], tmp_path, config)
  now = {"seconds": 0.0}

  def ten_minutes_a_step(state, batch):
    now["seconds"] += 600.0
    return full[0].train_step(state, batch)

  trainer.train_step, trainer.clock = ten_minutes_a_step, lambda: now["seconds"]
  trainer.run()
  # Timed: 3, 6, 10, 13, 17 (30 minutes after the previous save); steps: 7, 14; end: 20.
  assert trainer.checkpointer.steps() == [3, 6, 7, 10, 13, 14, 17, 20]
  assert_manifests_valid(tmp_path)


def tiny_state(step: int) -> TrainState:
  rng = np.random.default_rng(step)
  params = {f"layer_{i}": {"w": rng.standard_normal((16, 16), np.float32)} for i in range(8)}
  return TrainState(np.int32(step), params, {}, (), None, np.zeros(2, np.uint32))


IDENTITY = {"model_name": "nf_resnet", "model": {"depth": 18}}


def test_background_save_is_finished_by_close(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, IDENTITY)
  ckpt.save(tiny_state(1), wait=False)
  assert ckpt.pending_step == 1
  ckpt.save(tiny_state(2), wait=False)  # Waits for step 1 (and writes its manifest) first.
  assert ckpt.pending_step == 2
  assert checkpoint_manifest.verify_manifest(tmp_path / "checkpoints" / "1") is None
  ckpt.close()
  assert ckpt.pending_step is None
  assert_manifests_valid(tmp_path)
  restored = checkpoint.Checkpointer(tmp_path, IDENTITY).manager.restore(
    2, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  )
  np.testing.assert_array_equal(
    restored.state["params"]["layer_0"]["w"], tiny_state(2).params["layer_0"]["w"]
  )


def test_saves_leave_the_preemption_sync_point_to_the_trainer(tmp_path, monkeypatch):
  """Orbax would poll it when a save starts and, in its finalize thread, with that save's
  step: a late call with an older step moves JAX's shared sync point (two processes then
  stop at different steps and hang). Only ``Trainer.poll_stop`` may call it."""
  calls = []

  def record(step):
    calls.append((step, threading.current_thread().name))
    return False

  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", record)
  ckpt = checkpoint.Checkpointer(tmp_path, IDENTITY)
  ckpt.save(tiny_state(1), wait=False)
  ckpt.save(tiny_state(2))
  ckpt.close()
  assert ckpt.steps() == [1, 2]
  assert calls == []


def test_failure_surfacing_at_wait_is_a_write_error(tmp_path, monkeypatch):
  """The write fails in orbax's background thread: ``wait`` raises, nothing partial is left."""
  ckpt = checkpoint.Checkpointer(tmp_path, IDENTITY)
  ckpt.save(tiny_state(1))

  async def disk_full(self, item, directory):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
  ckpt.save(tiny_state(2), wait=False)  # Returns: the write fails in the background.
  with pytest.raises(checkpoint.CheckpointWriteError) as info:
    ckpt.wait()
  assert info.value.errno == errno.ENOSPC
  assert str(info.value).startswith("cannot save checkpoint 2 to ")
  names = [p.name for p in (tmp_path / checkpoint.CHECKPOINT_DIR).iterdir()]
  assert not any(checkpoint.TMP_DIR_SUFFIX in name for name in names), names
  assert ckpt.steps() == [1] and ckpt.pending_step is None
  monkeypatch.undo()
  ckpt.close()
  assert_manifests_valid(tmp_path)
