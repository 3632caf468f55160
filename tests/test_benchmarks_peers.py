"""``benchmarks.peers``: the case list, bad input, the arithmetic, the worker protocol, results.

Nothing here needs torch: the worker is a fake script that speaks the protocol and logs when
each of its steps ran, and our side is a fake step that logs the same way, so the order of
the timed steps (ours, then timm's, round after round) is checked on one clock. The one test
of the real worker needs the side environment and skips without it. The cases are
``benchmarks.peers_cases``, our side ``benchmarks.peers_ours``, the worker process and the side
environment ``benchmarks.peers_env``; a patched name is patched in the module that looks it up.
"""

import dataclasses
import json
import pathlib
import sys
import textwrap
import time

import pytest

from benchmarks import peers, peers_cases, peers_env, peers_ours
from experiments import cli

FAKE_WORKER = textwrap.dedent(
  """
  import json, sys, time
  log = open(sys.argv[1], "a")
  mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
  def send(reply):
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
  if mode == "dies":
    sys.stderr.write("fake worker: cannot import timm\\n")
    sys.exit(3)
  send({"ok": True, "ready": True, "torch": "0.fake", "timm": "0.fake", "threads": 1})
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "quit":
      break
    if mode == "fails" and op == "prepare":
      send({"ok": False, "error": "RuntimeError: no such model"})
    elif op == "prepare":
      send({"ok": True, "params": 123})
    elif op == "time":
      times = []
      for _ in range(request["steps"]):
        log.write(f"{time.monotonic_ns()} timm {request['case']}\\n")
        log.flush()
        time.sleep(0.002)
        times.append(0.25)
      send({"ok": True, "step_times_s": times})
    else:
      send({"ok": True})
  """
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """The fake worker and a fake step of ours, both logging to ``tmp/steps.log``."""
  script, log = tmp_path / "fake_worker.py", tmp_path / "steps.log"
  script.write_text(FAKE_WORKER)

  def prepare_ours(case, warmup):
    def step():
      with log.open("a") as f:
        f.write(f"{time.monotonic_ns()} ours {case.name}\n")
      time.sleep(0.002)
      return 0.5

    return step, {"compile_s": 0.0, "params": 120}

  monkeypatch.setattr(peers_ours, "prepare_ours", prepare_ours)
  monkeypatch.setattr(peers_env, "ensure_venv", lambda venv, create: None)
  monkeypatch.setattr(peers, "pin_threads", lambda threads: None)
  monkeypatch.setattr(
    peers_env, "worker_command", lambda python, threads: [sys.executable, str(script), str(log)]
  )
  return {"script": script, "log": log, "out": tmp_path / "results"}


def logged_sides(log: pathlib.Path) -> list[str]:
  rows = [line.split() for line in log.read_text().splitlines()]
  return [side for _, side, _ in sorted(rows, key=lambda row: int(row[0]))]


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def check_one_error_line(err: str, expected: str) -> None:
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert expected in lines[0], err


# The cases.


def test_case_names_shapes_and_batches():
  names = [case.name for case in peers_cases.CASES]
  assert len(names) == len(set(names)) == 16
  shapes = {
    (c.name, c.resolution, c.batch_size, c.channels, c.num_classes) for c in peers_cases.CASES
  }
  assert ("nf50_224px_b16_train", 224, 16, 3, 1000) in shapes
  assert ("bn50_32px_b128_eval", 32, 128, 3, 1000) in shapes
  assert ("table1_nf26_train", 16, 128, 1, 10) in shapes
  pairs = {(c.model, c.timm and c.timm["name"]) for c in peers_cases.CASES if not c.study}
  assert pairs == {("nf_resnet", "nf_resnet50"), ("resnet_v2", "resnet50")}
  nf18 = [c for c in peers_cases.CASES if c.name.startswith("table1_nf18")]
  assert [c.timm for c in nf18] == [None, None] and "bottleneck blocks only" in nf18[0].no_timm
  assert peers_cases.select("table1_bn26_train")[0].timm_label().startswith("resnet26(channels=")


def test_table1_cases_are_the_study_config():
  case = peers_cases.select("table1_nf26_train")[0]
  config = peers_ours.study_config(case)
  assert config.model_name == "nf_resnet" and config.model.depth == 26
  assert (config.model.width, config.model.stem, config.data.image_size) == (0.25, "cifar", 16)
  assert config.train.batch_size == case.batch_size == 128
  spec = case.timm_spec()
  assert (spec["in_chans"], spec["num_classes"], spec["resolution"]) == (1, 10, 16)
  assert spec["cifar_stem"] and spec["mode"] == "train"


def test_select_takes_comma_separated_substrings():
  assert [c.name for c in peers_cases.select("bn18_,nf50_224px_b16_e")] == [
    "nf50_224px_b16_eval",
    "table1_bn18_train",
    "table1_bn18_eval",
  ]
  assert peers_cases.select("nothing") == []


def test_list_prints_the_selected_cases(capsys):
  assert peers.main(["--list", "--only=table1_nf18"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and lines[0].startswith("table1_nf18_train: ours nf_resnet-18 w0.25")
  assert "timm cannot build" in lines[0]


# Bad input: one error line, exit 2, nothing written.

BAD_INPUTS = [
  (["--only=nomatch"], "--only='nomatch' matches no case; cases: nf50_224px_b16_train"),
  (["--rounds=0"], "argument --rounds: 0 is not a positive integer"),
  (["--steps=-1"], "argument --steps: -1 is not a positive integer"),
  (["--warmup=x"], "argument --warmup: 'x' is not a non-negative integer"),
  (["--threads=0"], "argument --threads: 0 is not a positive integer"),
  (["--threads=4096"], "--threads=4096 is more than the"),
  (["--omp_wait_policy=spin"], "argument --omp_wait_policy: invalid choice: 'spin'"),
  (["--machine=../x"], "argument --machine: '../x' is not a file-name label"),
  (["--out_dir={tmp}/a_file"], "a_file exists and is not a folder"),
  (
    ["--no_create", "--peers_venv={tmp}/no_venv"],
    "no_venv/bin/python does not exist; run without --no_create to install torch and timm",
  ),
]


@pytest.mark.parametrize("argv, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_exit_2(argv, expected, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(peers_env, "Worker", None)  # Nothing may start the worker.
  (tmp_path / "a_file").write_text("not a folder\n")
  before = snapshot(tmp_path)
  argv = [a.format(tmp=tmp_path) for a in argv]
  try:
    code = peers.main([f"--out_dir={tmp_path}/results", "--machine=m", *argv])
  except SystemExit as exit_:
    code = exit_.code
  assert code == cli.USAGE_ERROR
  check_one_error_line(capsys.readouterr().err, expected)
  assert snapshot(tmp_path) == before


# The arithmetic.


def test_summarize_ratios_and_spreads():
  times = {
    "ours": [[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]],  # 16, 8 and 32 images/s at batch 16.
    "timm": [[2.0, 2.0], [2.0, 2.0], [1.0, 1.0]],  # 8, 8 and 16.
    "load": [1.5, 2.5, 2.0],
  }
  s = peers.summarize(16, times)
  assert s["rounds"]["ours"] == [16.0, 8.0, 32.0]
  assert s["rounds"]["ratio"] == [2.0, 1.0, 2.0]  # Per-round ratios, not ratios of medians.
  assert s["ours_images_per_s"] == {"median": 16.0, "min": 8.0, "max": 32.0}
  assert s["timm_images_per_s"] == {"median": 8.0, "min": 8.0, "max": 16.0}
  assert s["ratio"] == {"median": 2.0, "min": 1.0, "max": 2.0}
  assert s["load"] == {"median": 2.0, "min": 1.5, "max": 2.5}
  assert peers.images_per_s(128, [0.5, 1.5]) == 128.0


def test_summary_line():
  row = {"name": "x", **peers.summarize(16, {"ours": [[1.0]], "timm": [[2.0]], "load": [1.0]})}
  assert peers.summary_line(row) == (
    "x: ours 16.00 img/s (16.00-16.00), timm 8.00 img/s (8.00-8.00),"
    " ours/timm 2.00 (2.00-2.00), load 1.0-1.0"
  )


# The worker protocol.


def test_rounds_alternate_ours_then_timm(fake):
  case = peers_cases.select("table1_bn18_train")[0]
  with peers_env.Worker(peers_env.worker_command(None, 1)) as worker:
    assert worker.hello["torch"] == "0.fake"
    result = peers.measure(case, worker, rounds=3, steps=2, warmup=1)
  assert logged_sides(fake["log"]) == ["ours", "ours", "timm", "timm"] * 3
  assert result["rounds"]["ours"] == [256.0] * 3 and result["rounds"]["timm"] == [512.0] * 3
  assert result["ratio"]["median"] == 0.5
  assert result["params"] == {"ours": 120, "timm": 123} and result["steps"] == 2


def test_worker_errors_are_worker_errors(fake):
  log = str(fake["log"])
  with peers_env.Worker([sys.executable, str(fake["script"]), log, "fails"]) as worker:
    with pytest.raises(peers_env.WorkerError, match="RuntimeError: no such model"):
      worker.request("prepare", case="x", spec={})
    assert worker.request("release", case="x") == {"ok": True}
  with pytest.raises(peers_env.WorkerError, match="exit 3.*cannot import timm"):
    peers_env.Worker([sys.executable, str(fake["script"]), log, "dies"])


# The results files.


def run(fake, *argv: str) -> int:
  out = fake["out"]
  return peers.main(
    [f"--out_dir={out}", "--machine=m", "--rounds=2", "--steps=1", "--threads=1", *argv]
  )


def test_run_writes_results_and_skips_what_timm_cannot_build(fake, capsys):
  assert run(fake, "--only=table1_nf18_train,table1_bn18_train") == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("table1_nf18_train: not timed: timm cannot build")
  assert out[1].startswith("table1_bn18_train: ours 256.00 img/s (256.00-256.00), timm 512.00")
  stem = "peers-m-only-table1-nf18-train-table1-bn18-train"
  assert sorted(snapshot(fake["out"])) == [f"{stem}.json", f"{stem}.md"]
  payload = json.loads((fake["out"] / f"{stem}.json").read_text())
  assert payload["arguments"]["only"] == "table1_nf18_train,table1_bn18_train"
  assert [row["name"] for row in payload["results"]] == ["table1_nf18_train", "table1_bn18_train"]
  assert payload["torch"] == "0.fake" and payload["threads"] == 1
  md = (fake["out"] / f"{stem}.md").read_text()
  assert "| table1_bn18_train | resnet_v2-18 w0.25 16px 1ch b128 train | resnet18(" in md
  assert "| 1 | 256.00 (256.00-256.00) | 512.00 (512.00-512.00) | 0.50 (0.50-0.50) |" in md


def test_another_selection_needs_force(fake, capsys):
  assert run(fake, "--only=bn18_") == 0
  assert run(fake, "--only=bn18_", "--rounds=1") == 0  # Same cases: replaces its own file.
  capsys.readouterr()
  before = snapshot(fake["out"])
  assert run(fake, "--only=bn18") == 2  # Same file name (slug "bn18"), other selection.
  err = capsys.readouterr().err
  check_one_error_line(err, "peers-m-only-bn18.json holds the cases of `python -m benchmarks.peers")
  assert err.rstrip().endswith("pass --force to overwrite it")
  assert snapshot(fake["out"]) == before
  assert run(fake, "--only=bn18", "--force") == 0


def test_a_file_not_written_by_peers_needs_force(fake, capsys):
  fake["out"].mkdir()
  (fake["out"] / "peers-m-only-bn18.md").write_text("# hand-written\n")
  assert run(fake, "--only=bn18") == 2
  check_one_error_line(capsys.readouterr().err, "peers-m-only-bn18.md exists without")


# The side environment.


def test_install_commands_use_the_cpu_index_and_setup_peers():
  requirements = peers_env.peers_requirements()
  assert any(r.startswith("torch") for r in requirements) and "timm>=1.0" in requirements
  torch_step, rest = peers_env.install_commands(pathlib.Path("v"), requirements)
  assert torch_step[:5] == ["v/bin/python", "-m", "pip", "install", "--index-url"]
  assert torch_step[5] == peers_env.CPU_INDEX and "torchvision" in torch_step
  assert not any(r.startswith("torch") for r in rest[4:]) and "timm>=1.0" in rest


def test_worker_env_sets_threads_and_the_openmp_wait_policy(monkeypatch):
  monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
  env = peers_env.worker_env(3)
  assert (env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]) == ("3", "PASSIVE")
  assert env["PYTHONPATH"].split(":")[0] == str(peers_env.REPO)
  assert peers_env.worker_env(1, "unset")["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.skipif(
  not peers_env.venv_python(peers_env.DEFAULT_VENV).exists(),
  reason=f"no side venv at {peers_env.DEFAULT_VENV} (torch and timm): python -m benchmarks.peers"
  " creates it",
)
def test_real_worker_builds_the_study_shape():
  case = dataclasses.replace(peers_cases.select("table1_nf26_eval")[0], batch_size=2)
  command = peers_env.worker_command(peers_env.venv_python(peers_env.DEFAULT_VENV), 1)
  with peers_env.Worker(command, peers_env.worker_env(1)) as worker:
    params = worker.request("prepare", case=case.name, spec=case.timm_spec(), warmup=0)["params"]
    times = worker.request("time", case=case.name, steps=1)["step_times_s"]
  assert len(times) == 1 and times[0] > 0
  assert params == 882106  # Ours: 882114 (8 more: our skip gains, one per block).
