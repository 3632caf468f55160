"""Two local processes (``jax.distributed`` on 127.0.0.1, 2 CPU devices each) vs one process.

Uses ``experiments/multihost_check.py``; each process reads its own shard of the data.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_DEVICES = 2


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(tmp: pathlib.Path, name: str, num_processes: int, process_id: int, port: int, devices):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS")}
  out = tmp / f"{name}_{process_id}.json"
  cmd = [
    sys.executable,
    "-m",
    "experiments.multihost_check",
    f"--num_processes={num_processes}",
    f"--process_id={process_id}",
    f"--port={port}",
    f"--local_devices={devices}",
    f"--workdir={tmp / name}",
    f"--out={out}",
  ]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  return proc, out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  port = free_port()
  procs = [
    launch(tmp, "single", 1, 0, 0, 2 * LOCAL_DEVICES),
    launch(tmp, "multi", 2, 0, port, LOCAL_DEVICES),
    launch(tmp, "multi", 2, 1, port, LOCAL_DEVICES),
  ]
  for proc, _ in procs:
    try:
      output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for other, _ in procs:
        other.kill()
      pytest.fail("multi-process run timed out")
    assert proc.returncode == 0, output.decode()[-3000:]
  return [json.loads(out.read_text()) for _, out in procs]


def test_process_layout(results):
  single, multi0, multi1 = results
  assert (single["process_count"], single["device_count"]) == (1, 2 * LOCAL_DEVICES)
  assert [multi0["process_index"], multi1["process_index"]] == [0, 1]
  assert multi0["process_count"] == multi1["process_count"] == 2
  assert multi0["device_count"] == 2 * LOCAL_DEVICES


def test_two_processes_reach_the_same_losses_as_one(results):
  single, multi0, multi1 = results
  assert len(single["losses"]) == 4
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
