"""The sweep runner end to end: a 2-entry synthetic sweep, its report, failures, reruns, dry runs.

The sweeps run through the real command line (``python -m experiments.studies.sweep``),
whose entries are themselves ``experiments.main`` processes; the test config
uses the digits config's ``:smoke`` form (synthetic data, 2 steps) on one CPU
device, so each trained entry costs one small compilation.
"""

import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.configs import ConfigError
from experiments.studies import report, sweep

REPO = pathlib.Path(__file__).parents[1]
TEST_CONFIG = textwrap.dedent(
  """
  from experiments.configs import digits
  from experiments.configs.sweeps import SweepEntry, select

  ARG = "model=fixup,smoke"


  def get_config(arg=None):
    return digits.get_config(arg)


  def get_sweep(name):
    pair = [
      SweepEntry("pair_a", ARG, {"train.batch_size": 8}),
      SweepEntry("pair_b", ARG, {"train.batch_size": 16}),
    ]
    broken = [
      SweepEntry("missing_data", ARG, {"data.name": "mnist", "data.data_dir": "/no/such/dir"}),
      SweepEntry("bad_override", ARG, {"train.no_such_field": 1}),
      pair[0],
      SweepEntry("fresh_c", ARG, {"train.batch_size": 24}),
    ]
    reuse = [
      SweepEntry("copy_a", ARG, {"train.batch_size": 8}, reuse="pair_a"),
      SweepEntry("copy_other_config", ARG, {"train.batch_size": 24}, reuse="pair_a"),
      SweepEntry("copy_unfinished", ARG, {"train.batch_size": 8}, reuse="no_such_run"),
    ]
    long = [SweepEntry("long", ARG, {"train.num_steps": 100000, "train.checkpoint_every": 0})]
    sweeps = {
      "pair": lambda: pair, "broken": lambda: broken, "reuse": lambda: reuse, "long": lambda: long
    }
    return select(name, sweeps, "tiny")
  """
)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=900,
  )


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
  """Runs the 2-entry ``pair`` sweep once; returns (config file, root, completed process)."""
  base = tmp_path_factory.mktemp("sweep")
  config = base / "tiny_sweep.py"
  config.write_text(TEST_CONFIG)
  root = base / "root"
  done = run_cli("experiments.studies.sweep", f"--config={config}:pair", f"--workdir={root}")
  return config, root, done


def final_eval_accuracy(run_dir: pathlib.Path) -> float:
  rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r["kind"] == "eval"][-1]["accuracy"]


def test_two_entry_sweep_runs_and_reports_both_entries(sweep_root):
  _, root, done = sweep_root
  assert done.returncode == 0, done.stderr
  assert "sweep: 2 of 2 entries done" in done.stdout
  for name in ("pair_a", "pair_b"):
    assert json.loads((root / name / "sweep_status.json").read_text())["status"] == "done"
    assert json.loads((root / name / "config.json").read_text())["train"]["num_steps"] == 2
  groups = report.write_report(root)
  text = (root / "report.md").read_text()
  assert "| train.batch_size | all runs |" in text
  for name, batch in (("pair_a", 8), ("pair_b", 16)):
    accuracy = final_eval_accuracy(root / name)
    assert f"| batch_size={batch} | {100 * accuracy:.2f} (n=1) |" in text
    assert f"| {name} | {100 * accuracy:.2f} | 2 |" in text
  assert [(g.row, g.values) for g in groups] == [
    (("8",), [final_eval_accuracy(root / "pair_a")]),
    (("16",), [final_eval_accuracy(root / "pair_b")]),
  ]
  assert (root / "report.png").stat().st_size > 0
  assert len((root / "report.csv").read_text().splitlines()) == 3


def test_rerun_skips_finished_entries(sweep_root):
  config, root, _ = sweep_root
  before = (root / "pair_a" / "metrics.jsonl").read_text()
  again = run_cli("experiments.studies.sweep", f"--config={config}:pair", f"--workdir={root}")
  assert again.returncode == 0
  assert again.stdout.count("finished, skipped") == 2
  assert (root / "pair_a" / "metrics.jsonl").read_text() == before


def test_failing_entries_do_not_stop_the_rest(sweep_root):
  config, root, _ = sweep_root
  done = run_cli("experiments.studies.sweep", f"--config={config}:broken", f"--workdir={root}")
  assert done.returncode == 1
  assert "[4/4] fresh_c: done in" in done.stdout  # Ran after two failures.
  assert "sweep: 2 of 4 entries done" in done.stdout
  assert "failed: missing_data: error: data directory '/no/such/dir'" in done.stdout
  assert "failed: bad_override: error: override train.no_such_field=1" in done.stdout
  status = json.loads((root / "missing_data" / "sweep_status.json").read_text())
  assert (status["status"], status["returncode"]) == ("failed", 2)


def test_dry_run_prints_one_command_per_entry(sweep_root):
  config, root, _ = sweep_root
  done = run_cli(
    "experiments.studies.sweep", f"--config={config}:broken", "--workdir=/cluster", "--dry_run"
  )
  lines = done.stdout.splitlines()
  assert done.returncode == 0 and len(lines) == 4
  assert shlex.split(lines[0]) == [
    "python",
    "-m",
    "experiments.main",
    f"--config={config}:model=fixup,smoke",
    "--workdir=/cluster/missing_data",
    "--config.data.name=mnist",
    "--config.data.data_dir=/no/such/dir",
  ]


def test_shards_split_the_entries_between_sweeps(sweep_root):
  config, _, _ = sweep_root
  whole = sweep.load_sweep(f"{config}:broken")
  names = [[e.name for e in sweep.shard_of(whole, f"{k}/3").entries] for k in range(3)]
  assert names == [["missing_data", "fresh_c"], ["bad_override"], ["pair_a"]]
  assert sweep.shard_of(whole, None) is whole
  for bad in ("2/2", "1", "a/2", "-1/2", "0/0"):
    with pytest.raises(ConfigError, match=rf"--shard='{bad}' must be K/N with 0 <= K < N"):
      sweep.shard_of(whole, bad)
  done = run_cli(
    "experiments.studies.sweep",
    f"--config={config}:broken",
    "--workdir=/cluster",
    "--dry_run",
    "--shard=1/2",
  )
  assert done.returncode == 0, done.stderr
  assert [shlex.split(line)[4] for line in done.stdout.splitlines()] == [
    "--workdir=/cluster/bad_override",
    "--workdir=/cluster/fresh_c",
  ]


def test_unknown_sweep_name_is_a_one_line_usage_error(sweep_root):
  config, root, _ = sweep_root
  done = run_cli("experiments.studies.sweep", f"--config={config}:nope", f"--workdir={root}")
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
    "error: unknown tiny sweep 'nope'; allowed: pair, broken, reuse, long"
  ]


def test_unknown_imagenet_sweep_and_missing_sweep_name():
  config = str(REPO / "experiments/configs/imagenet.py")
  with pytest.raises(ConfigError, match="unknown imagenet sweep 'tabel1'; allowed: table1"):
    sweep.load_sweep(f"{config}:tabel1")
  with pytest.raises(ConfigError, match="names no sweep"):
    sweep.load_sweep(config)
  with pytest.raises(ConfigError, match="--only=zzz matches no entry"):
    sweep.load_sweep(f"{config}:table2", only=["zzz"])
  assert len(sweep.load_sweep(f"{config}:table2", only=["bn50_*"]).entries) == 9


def test_entry_state(tmp_path):
  assert sweep.entry_state(tmp_path / "never") == "new"
  (tmp_path / "run" / "checkpoints" / "40").mkdir(parents=True)
  assert sweep.entry_state(tmp_path / "run") == "interrupted"
  (tmp_path / "run" / "sweep_status.json").write_text('{"status": "diverged"}')
  assert sweep.entry_state(tmp_path / "run") == "diverged"
  (tmp_path / "run" / "sweep_status.json").write_text('{"status": "failed", "returncode": 3}')
  assert sweep.entry_state(tmp_path / "run") == "diverged"  # As older sweeps recorded it.
  (tmp_path / "run" / "sweep_status.json").write_text('{"status": "failed", "returncode": 1}')
  assert sweep.entry_state(tmp_path / "run") == "interrupted"  # A crash resumes.
  (tmp_path / "run" / "sweep_status.json").write_text('{"status": "done"}')
  assert sweep.entry_state(tmp_path / "run") == "finished"


def test_a_diverged_entry_is_reported_and_not_rerun(sweep_root, tmp_path, capsys):
  """Its rerun would diverge at the same step again: the sweep skips it, and says so."""
  config, _, _ = sweep_root
  loaded = sweep.load_sweep(f"{config}:pair")
  error = "error: non-finite loss at step 2 (loss nan); training stopped (none saved)"
  for name, status in (("pair_a", "diverged"), ("pair_b", "done")):
    (tmp_path / name).mkdir()
    record = {"status": status, "returncode": 3 if status == "diverged" else 0, "error": error}
    (tmp_path / name / "sweep_status.json").write_text(json.dumps(record))
  results = sweep.run_sweep(loaded, str(tmp_path))
  assert [(name, s["status"]) for name, s in results] == [
    ("pair_a", "diverged"),
    ("pair_b", "done"),
  ]
  assert "[1/2] pair_a: diverged, skipped" in capsys.readouterr().out
  summary, ok = sweep.summarize(results)
  assert not ok and summary.splitlines() == [
    "sweep: 1 of 2 entries done",
    f"  diverged: pair_a: {error}",
  ]


def test_reuse_copies_a_finished_run_with_the_same_config_only(sweep_root):
  config, root, done = sweep_root
  assert done.returncode == 0, done.stderr
  loaded = sweep.load_sweep(f"{config}:reuse")
  same, other, unfinished = loaded.entries
  assert sweep.reuse_run(loaded, other, str(root), ()) is None
  assert sweep.reuse_run(loaded, unfinished, str(root), ()) is None
  assert sweep.reuse_run(loaded, same, str(root), ("train.seed=1",)) is None
  status = sweep.reuse_run(loaded, same, str(root), ())
  assert status["status"] == "done" and status["reused"] == "pair_a"
  copied = root / "copy_a"
  assert sweep.entry_state(copied) == "finished"
  assert final_eval_accuracy(copied) == final_eval_accuracy(root / "pair_a")
  assert sorted(p.name for p in copied.iterdir()) == [
    "config.json",
    "metrics.jsonl",
    "sweep_status.json",
  ]


def test_same_config_accepts_only_fields_added_later_as_none():
  ran = {"data": {"augment": "none"}, "seed": 0}
  assert sweep.same_config(ran, {"data": {"augment": "none", "randaugment": None}, "seed": 0})
  assert not sweep.same_config(ran, {"data": {"augment": "none", "randaugment": 2}, "seed": 0})
  assert not sweep.same_config(ran, {"data": {"augment": "none"}, "seed": 1})
  assert not sweep.same_config({**ran, "old": 1}, ran)
  # A field added later with its default (the old behaviour) is the same run; another value is not.
  defaults = {"train.grad_accum_steps": 1}
  assert sweep.same_config({"train": {}}, {"train": {"grad_accum_steps": 1}}, defaults)
  assert not sweep.same_config({"train": {}}, {"train": {"grad_accum_steps": 4}}, defaults)
  assert sweep.field_defaults()["train.grad_accum_steps"] == 1


def test_a_folder_with_another_runs_config_is_neither_skipped_nor_resumed(sweep_root, tmp_path):
  config, root, done = sweep_root
  assert done.returncode == 0, done.stderr
  loaded = sweep.load_sweep(f"{config}:pair")
  first = loaded.entries[0]
  wanted = json.loads(sweep.sweep_config(loaded, first).to_json_best_effort())
  assert sweep.other_run(root / "pair_a", wanted) is None
  assert "holds a run with another config" in sweep.other_run(root / "pair_b", wanted)
  stale = tmp_path / "pair_a"
  stale.mkdir()
  (stale / "config.json").write_text((root / "pair_b" / "config.json").read_text())
  (stale / "sweep_status.json").write_text('{"status": "done"}')
  [(name, status)] = sweep.run_sweep(dataclasses.replace(loaded, entries=[first]), str(tmp_path))
  assert status["status"] == "failed" and "another config" in status["error"]
  assert sorted(p.name for p in stale.iterdir()) == ["config.json", "sweep_status.json"]


def test_set_overrides_are_checked_for_every_entry_before_anything_runs(sweep_root):
  config, root, _ = sweep_root
  loaded = sweep.load_sweep(f"{config}:broken")  # Its own bad entries fail later, one by one.
  sweep.check_overrides(loaded, ["train.batch_size=32", "train.ema_warmup=false"])
  with pytest.raises(ConfigError, match="no such config field 'train.no_such'"):
    sweep.check_overrides(loaded, ["train.no_such=1"])
  with pytest.raises(ConfigError, match=r"value 'abc' is not of type int \(the field holds 8\)"):
    sweep.check_overrides(loaded, ["train.batch_size=abc"])
  done = run_cli(
    "experiments.studies.sweep",
    f"--config={config}:pair",
    f"--workdir={root / 'never'}",
    "--set=train.no_such=1",
  )
  assert done.returncode == 2 and not (root / "never").exists()
  assert done.stderr.strip().splitlines() == [
    "error: --set 'train.no_such=1': no such config field 'train.no_such'"
  ]


def processes_mentioning(text: str) -> list[int]:
  found = []
  for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    try:
      if text in cmdline.read_bytes().decode(errors="replace"):
        found.append(int(cmdline.parent.name))
    except OSError:
      pass
  return found


def test_sigterm_is_forwarded_to_the_running_entry_and_waited_for(sweep_root, tmp_path):
  config, _, _ = sweep_root
  root = tmp_path / "signalled"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "experiments.studies.sweep",
      f"--config={config}:long",
      f"--workdir={root}",
    ],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  log = root / "long" / "train.log"
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:  # Wait until the trainer is training.
    if log.exists() and len(log.read_text().splitlines()) > 3:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 5, err
  assert err.strip().splitlines() == [
    "error: sweep interrupted by SIGTERM: long stopped (exit 5); rerun to resume"
  ]
  assert processes_mentioning(str(root)) == []  # The trainer is gone too.
  status = json.loads((root / "long" / "sweep_status.json").read_text())
  assert status["status"] == "interrupted" and status["returncode"] == 5
  assert "error: interrupted by SIGTERM" in log.read_text()
