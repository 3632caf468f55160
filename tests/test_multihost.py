"""Two local processes (``jax.distributed`` on 127.0.0.1, 2 CPU devices each) vs one process.

Uses ``experiments/multihost_check.py``; each process reads its own shard of the data.
Three two-process training runs: uninterrupted; SIGTERM'd on process 1 only; the same
workdir rerun to the end. A fourth is SIGTERM'd with JAX's preemption service off. A
fifth launch gives each process its own workdir, which the run must refuse within seconds.
The shared-storage check's other cases run in this process, with the collectives replaced.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import cli, shared_storage, train
from experiments.configs import ConfigError
from experiments.logger import DONE_FILE

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_DEVICES = 2
NUM_STEPS = 12
SIGTERM_AT = 3  # Process 1 only; the stop falls at least 7 steps before the end.
TIMEOUT_S = 300  # Per launch: a hang fails the test instead of blocking the suite.
STOP_LINE = (
  "error: interrupted by {} at step {}: checkpoint saved; rerun the same command to resume"
)
NOT_SHARED = (
  "error: --workdir={} is not shared: process 1 of 2 does not see the files process 0 writes"
  " there; use a directory every process reaches (a shared file system or a cloud bucket such"
  " as gs://)"
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(
  tmp: pathlib.Path,
  name: str,
  num_processes: int,
  process_id: int,
  port: int,
  devices,
  workdir=None,
  extra=(),
):
  """Starts one process; its stdout, stderr and result file are ``tmp/<name>_<id>.*``."""
  # No persistent compilation cache: process 0 alone would load its programs from it and
  # wait in its first collective while process 1 compiles, past gloo's 30 s deadline on a
  # busy machine.
  drop = ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_COMPILATION_CACHE_DIR")
  env = {k: v for k, v in os.environ.items() if k not in drop}
  base = tmp / f"{name}_{process_id}"
  cmd = [
    sys.executable,
    "-m",
    "experiments.multihost_check",
    f"--num_processes={num_processes}",
    f"--process_id={process_id}",
    f"--port={port}",
    f"--local_devices={devices}",
    f"--num_steps={NUM_STEPS}",
    f"--workdir={workdir or tmp / name}",
    f"--out={base}.json",
    *extra,
  ]
  with open(f"{base}.out", "w") as out, open(f"{base}.err", "w") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
  return proc, base


def finish(procs) -> list[dict]:
  """Waits for every process (killing all on a timeout): exit status, output, result."""
  for proc, _ in procs:
    try:
      proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for other, _ in procs:
        other.kill()
      pytest.fail(f"multi-process run timed out after {TIMEOUT_S} s")
  runs = []
  for proc, base in procs:
    result = pathlib.Path(f"{base}.json")
    runs.append(
      dict(
        status=proc.returncode,
        stdout=pathlib.Path(f"{base}.out").read_text(),
        stderr=pathlib.Path(f"{base}.err").read_text(),
        result=json.loads(result.read_text()) if result.is_file() else None,
      )
    )
  return runs


def two_processes(tmp: pathlib.Path, name: str, workdir=None, extra_1=(), extra=()) -> list[dict]:
  """Processes 0 and 1; ``extra`` flags go to both, ``extra_1`` to process 1 only."""
  port = free_port()
  return finish(
    [
      launch(tmp, name, 2, 0, port, LOCAL_DEVICES, workdir, extra),
      launch(tmp, name, 2, 1, port, LOCAL_DEVICES, workdir, [*extra, *extra_1]),
    ]
  )


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def results(tmp):
  """The uninterrupted runs: one process of 4 devices; two processes of 2 (concurrently)."""
  port = free_port()
  runs = finish(
    [
      launch(tmp, "single", 1, 0, 0, 2 * LOCAL_DEVICES),
      launch(tmp, "multi", 2, 0, port, LOCAL_DEVICES),
      launch(tmp, "multi", 2, 1, port, LOCAL_DEVICES),
    ]
  )
  for run in runs:
    assert run["status"] == 0, run["stderr"][-3000:]
  return [run["result"] for run in runs]


@pytest.fixture(scope="module")
def interrupted(tmp):
  """Two processes, SIGTERM to process 1 after step ``SIGTERM_AT``; then rerun, same workdir."""
  workdir = tmp / "interrupted"
  stopped = two_processes(tmp, "stopped", workdir, [f"--sigterm_at_step={SIGTERM_AT}"])
  after_stop = dict(steps=checkpoint_steps(workdir), done=(workdir / DONE_FILE).exists())
  resumed = two_processes(tmp, "resumed", workdir, [f"--sigterm_at_step={SIGTERM_AT}"])
  return dict(workdir=workdir, stopped=stopped, after_stop=after_stop, resumed=resumed)


def test_process_layout(results):
  single, multi0, multi1 = results
  assert (single["process_count"], single["device_count"]) == (1, 2 * LOCAL_DEVICES)
  assert [multi0["process_index"], multi1["process_index"]] == [0, 1]
  assert multi0["process_count"] == multi1["process_count"] == 2
  assert multi0["device_count"] == 2 * LOCAL_DEVICES


def test_two_processes_reach_the_same_losses_as_one(results):
  single, multi0, multi1 = results
  assert len(single["losses"]) == NUM_STEPS
  np.testing.assert_allclose(multi0["losses"], single["losses"], rtol=1e-5)
  for multi in (multi0, multi1):
    np.testing.assert_allclose(multi["train/loss"], single["train/loss"], rtol=1e-5)
  assert multi1["losses"] is None  # Only process 0 writes metrics.jsonl.


def test_evaluation_counts_each_example_once_across_processes(results):
  single, multi0, multi1 = results
  for run in results:
    assert run["eval/count"] == 40  # Not 2 x 40, not 40 / 2.
  for multi in (multi0, multi1):
    np.testing.assert_allclose(multi["eval/accuracy"], single["eval/accuracy"], rtol=1e-6)
    np.testing.assert_allclose(multi["eval/loss"], single["eval/loss"], rtol=1e-5)


def test_sigterm_to_one_process_stops_both_at_the_same_step(interrupted):
  """JAX's preemption notifier owns SIGTERM: process 1's notice reaches process 0 too."""
  runs, after = interrupted["stopped"], interrupted["after_stop"]
  for run in runs:
    assert run["status"] == cli.INTERRUPTED, run["stderr"][-3000:]
  stop = runs[0]["result"]["stopped_at"]
  assert SIGTERM_AT < stop < NUM_STEPS
  assert after["steps"][-1] == stop and not after["done"]
  for run in runs:
    assert run["result"]["stopped_at"] == stop
    assert run["result"]["checkpoints"] == after["steps"]  # One workdir, read by each.
    assert run["result"]["signal"] == "a preemption notice"
    assert STOP_LINE.format("a preemption notice", stop) in run["stderr"].splitlines()


def test_rerun_after_the_stop_ends_like_the_uninterrupted_run(results, interrupted):
  _, multi0, multi1 = results
  stop = interrupted["stopped"][0]["result"]["stopped_at"]
  resumed = interrupted["resumed"]
  for run in resumed:
    assert run["status"] == 0, run["stderr"][-3000:]
  assert f"resuming from the checkpoint of step {stop} of {NUM_STEPS}" in resumed[0]["stdout"]
  assert (interrupted["workdir"] / DONE_FILE).is_file()
  assert checkpoint_steps(interrupted["workdir"])[-1] == NUM_STEPS
  # metrics.jsonl holds the rows of both runs: steps 1 .. stop, then stop + 1 .. NUM_STEPS.
  np.testing.assert_allclose(resumed[0]["result"]["losses"], multi0["losses"], rtol=1e-6)
  for run, full in zip(resumed, (multi0, multi1), strict=True):
    for key in ("train/loss", "eval/accuracy", "eval/loss", "eval/count"):
      np.testing.assert_allclose(run["result"][key], full[key], rtol=1e-6, err_msg=key)


def test_without_the_preemption_service_the_processes_agree_every_sync_interval(tmp):
  """The trainer's own SIGTERM handler on process 1; the stop is gathered at the next
  multiple of ``STOP_SYNC_EVERY``, where every process saves and stops."""
  assert SIGTERM_AT < train.STOP_SYNC_EVERY < NUM_STEPS
  workdir = tmp / "no_service"
  runs = two_processes(
    tmp, "no_service", workdir, [f"--sigterm_at_step={SIGTERM_AT}"], ["--no_preemption_service"]
  )
  for run in runs:
    assert run["status"] == cli.INTERRUPTED, run["stderr"][-3000:]
    assert run["result"]["stopped_at"] == train.STOP_SYNC_EVERY
    assert run["result"]["signal"] == "SIGTERM"
    assert STOP_LINE.format("SIGTERM", train.STOP_SYNC_EVERY) in run["stderr"].splitlines()
  assert checkpoint_steps(workdir)[-1] == train.STOP_SYNC_EVERY
  assert not (workdir / DONE_FILE).exists()


def test_one_disk_per_host_fails_at_once_with_one_line(tmp):
  """``{process_id}`` in --workdir: each process writes to its own local folder."""
  started = time.monotonic()
  runs = two_processes(tmp, "separate", str(tmp / "disks" / "p{process_id}"))
  assert time.monotonic() - started < 60
  for process_id, run in enumerate(runs):
    assert run["status"] == cli.USAGE_ERROR, run["stderr"][-3000:]
    assert run["result"] is None
    line = NOT_SHARED.format(tmp / "disks" / f"p{process_id}")
    assert line in run["stderr"].splitlines(), run["stderr"][-3000:]
  # Nothing was written: process 0 removed its marker, process 1 wrote nothing.
  assert [p.name for p in (tmp / "disks").iterdir()] == ["p0"]
  assert list((tmp / "disks" / "p0").iterdir()) == []


def fake_processes(monkeypatch, index: int, others_see: list[bool]) -> None:
  """This process is ``index`` of ``len(others_see) + 1``; the others read back ``others_see``."""
  from jax.experimental import multihost_utils

  monkeypatch.setattr(shared_storage.jax, "process_count", lambda: len(others_see) + 1)
  monkeypatch.setattr(shared_storage.jax, "process_index", lambda: index)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda tree: tree)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: None)
  gather = lambda local: np.insert(np.array(others_see, np.int32), index, local)
  monkeypatch.setattr(multihost_utils, "process_allgather", gather)


def test_one_process_checks_nothing(tmp_path):
  shared_storage.check_shared_workdir(tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_process_0_removes_its_marker_when_another_cannot_read_it(tmp_path, monkeypatch):
  fake_processes(monkeypatch, 0, [False, True])
  with pytest.raises(ConfigError, match=r"is not shared: process 1 of 3 does not see"):
    shared_storage.check_shared_workdir(tmp_path / "run")
  assert list((tmp_path / "run").iterdir()) == []  # Created, then left empty.
  fake_processes(monkeypatch, 0, [True, True])
  shared_storage.check_shared_workdir(tmp_path / "run")  # Everyone sees it: no error.
  assert list((tmp_path / "run").iterdir()) == []


def test_other_processes_write_nothing_and_name_all_that_miss_it(tmp_path, monkeypatch):
  fake_processes(monkeypatch, 1, [True, False])
  with pytest.raises(ConfigError) as info:
    shared_storage.check_shared_workdir(tmp_path / "run")
  assert str(info.value).startswith(
    f"--workdir={tmp_path / 'run'} is not shared: processes 1, 2 of 3 do not see"
  )
  assert not (tmp_path / "run").exists()
  many = shared_storage.not_shared_message("gs://b/run", list(range(1, 21)), 21)
  assert "processes 1, 2, 3, 4, 5, 6, 7, 8 and 12 more of 21 do not see" in many
  assert shared_storage.not_shared_message("/x", [0, 1], 2).endswith(
    "process 0 cannot write a file there and read it back"
  )
