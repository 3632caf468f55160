"""Bad input to ``python -m experiments.main``: one ``error:`` line, exit code 2, no damage.

Each case fails before anything is compiled.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = "experiments/configs/quickstart.py"


def run_main(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.pop("NFRESNET_DATA_DIR", None)
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ")
  assert "Traceback" not in result.stderr + result.stdout
  for fragment in fragments:
    assert fragment in lines[0]


CASES = {
  "unknown_model": (["--config.model_name=resnet_x"], ["'resnet_x'", "nf_resnet", "fixup"]),
  "unknown_dataset": (["--config.data.name=imagenet9"], ["'imagenet9'", "digits", "cifar10"]),
  "unknown_optimizer": (["--config.optimizer.name=lamb"], ["'lamb'", "sgd", "adamw"]),
  "unknown_compute_dtype": (["--config.train.compute_dtype=fp8"], ["'fp8'", "bfloat16"]),
  "indivisible_batch": (["--config.train.batch_size=100"], ["batch_size=100", "device count 8"]),
  "unknown_field": (["--config.train.batch_sise=64"], ["batch_sise"]),
  "missing_data_dir": (
    ["--config.data.name=mnist", "--config.data.data_dir=/nonexistent/nfresnet_data"],
    ["/nonexistent/nfresnet_data"],
  ),
  "unknown_config_arg": ([], ["model='gpu'", "allowed: nf, bn"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_error(case, tmp_path):
  overrides, fragments = CASES[case]
  config = QUICKSTART + (":model=gpu" if case == "unknown_config_arg" else "")
  result = run_main(f"--config={config}", f"--workdir={tmp_path / 'run'}", *overrides, devices=8)
  assert_one_line_error(result, *fragments)
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_missing_workdir_flag():
  assert_one_line_error(run_main(f"--config={QUICKSTART}"), "--workdir")


def test_missing_config_file(tmp_path):
  result = run_main("--config=experiments/configs/nope.py", f"--workdir={tmp_path}")
  assert_one_line_error(result, "nope.py")


def test_workdir_of_another_model_is_refused_intact(tmp_path):
  """A workdir with checkpoints of NF-ResNet refuses the BN model and keeps its files."""
  from experiments import checkpoint

  workdir = tmp_path / "run"
  ckpt = checkpoint.Checkpointer(workdir, {"model_name": "nf_resnet", "model": {"depth": 18}})
  import jax.numpy as jnp

  from experiments.train_state import TrainState

  state = TrainState(jnp.int32(5), {"m": {"w": jnp.ones(2)}}, {}, (), None, jnp.zeros(2, "uint32"))
  ckpt.save(state)
  ckpt.close()
  (workdir / "metrics.jsonl").write_text('{"step": 5}\n')
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  result = run_main(f"--config={QUICKSTART}:model=bn", f"--workdir={workdir}")
  assert_one_line_error(result, "nf_resnet", "resnet_v2", "another --workdir")
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_a_full_disk_is_an_io_failure_and_the_rerun_completes(tmp_path):
  """A file-size limit (as a full disk) fails the first save: exit 4, one line, nothing partial.

  The run is not complete (no ``done.json``); rerunning without the limit finishes it.
  """
  import resource

  from experiments.studies import report

  workdir = tmp_path / "run"
  config = f"--config={QUICKSTART}:smoke"

  def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, resource.RLIM_INFINITY))

  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  result = subprocess.run(
    [sys.executable, "-m", "experiments.main", config, f"--workdir={workdir}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    preexec_fn=limit_file_size,
  )
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 4, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: I/O failure: cannot save checkpoint 2")
  assert "File too large" in lines[0] and "Traceback" not in result.stderr
  assert not (workdir / "done.json").exists()
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  assert not report.collect_runs(workdir)[0].complete
  again = run_main(config, f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / "done.json").read_text())["step"] == 2
  assert report.collect_runs(workdir)[0].complete
