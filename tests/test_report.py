"""The report on hand-made runs: seed aggregation (median, min-max), layout, failures, errors."""

import csv
import json
import pathlib
import subprocess
import sys

import pytest

from experiments.studies import report

REPO = pathlib.Path(__file__).parents[1]


def make_run(root, name, model, depth, seed, accuracy, extra_rows=()):
  """A run dir with config.json and metrics.jsonl; ``accuracy=None``: no eval row and no
  ``done.json`` (diverged)."""
  run = root / name
  run.mkdir(parents=True)
  config = {"model_name": model, "model": {"depth": depth}, "train": {"seed": seed, "lr": 0.1}}
  (run / "config.json").write_text(json.dumps(config))
  rows = [{"step": 5, "kind": "train", "loss": 2.0}, {"step": 5, "kind": "eval", "accuracy": 0.1}]
  rows += [{"step": 10, "kind": "train", "loss": 1.0 + seed}, *extra_rows]
  if accuracy is not None:
    rows.append({"step": 10, "kind": "eval", "accuracy": accuracy, "loss": 0.5})
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11, "kin'  # A killed write.
  (run / "metrics.jsonl").write_text(text)
  if accuracy is not None:
    (run / "done.json").write_text(json.dumps({"step": 10}))


@pytest.fixture
def root(tmp_path):
  for seed, acc in enumerate((0.80, 0.90, 0.85)):
    make_run(tmp_path, f"nf18_seed{seed}", "nf_resnet", 18, seed, acc)
  for seed, acc in enumerate((0.70, 0.75, None)):
    make_run(tmp_path, f"bn18_seed{seed}", "resnet_v2", 18, seed, acc)
  make_run(tmp_path, "nf26_seed0", "nf_resnet", 26, 0, 0.95)
  return tmp_path


def test_seeds_aggregate_to_median_and_min_max(root):
  groups = report.write_report(root)
  assert [(g.row, g.median, g.low, g.high, g.failed) for g in groups] == [
    (('"nf_resnet"', "18"), 0.85, 0.80, 0.90, 0),
    (('"nf_resnet"', "26"), 0.95, 0.95, 0.95, 0),
    (('"resnet_v2"', "18"), 0.725, 0.70, 0.75, 1),
  ]
  text = (root / "report.md").read_text()
  assert "| model_name, model.depth | all runs |" in text  # Seed and constant lr dropped.
  assert "| nf_resnet, depth=18 | 85.00 (80.00-90.00, n=3) |" in text
  assert "| resnet_v2, depth=18 | 72.50 (70.00-75.00, n=2, 1 failed) |" in text
  assert "| nf_resnet, depth=26 | 95.00 (n=1) |" in text
  assert "| bn18_seed2 | n/a | 10 |  | incomplete |" in text
  with (root / "report.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["model_name"] == "nf_resnet" and float(rows[0]["median"]) == 0.85
  assert rows[2]["runs"] == "bn18_seed0 bn18_seed1 bn18_seed2" and rows[2]["failed"] == "1"
  assert (root / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_and_cols_in_the_papers_layout(root, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  report.write_report(root, rows=["model.depth"], cols=["model_name"], out=out)
  text = (out / "report.md").read_text()
  assert "| model.depth | nf_resnet | resnet_v2 |" in text
  assert "| depth=18 | 85.00 (80.00-90.00, n=3) | 72.50 (70.00-75.00, n=2, 1 failed) |" in text
  assert "| depth=26 | 95.00 (n=1) |  |" in text
  assert (out / "report.png").exists() and not (root / "report.md").exists()


def test_train_metric_uses_the_last_train_row(root):
  groups = report.write_report(root, metric="train/loss", rows=["model_name"])
  # nf_resnet: losses 1, 2, 3 (depth 18) and 1 (depth 26); resnet_v2: 1, 2 (seed 2 incomplete).
  assert [(g.median, g.low, g.high, g.failed) for g in groups] == [
    (1.5, 1.0, 3.0, 0),
    (1.5, 1.0, 2.0, 1),
  ]


def test_sweep_status_supplies_wall_time_and_failures(root):
  (root / "nf26_seed0" / "sweep_status.json").write_text('{"status": "done", "wall_s": 12.5}')
  (root / "broken").mkdir()
  (root / "broken" / "sweep_status.json").write_text(
    '{"status": "failed", "error": "error: bad data dir"}'
  )
  report.write_report(root)
  text = (root / "report.md").read_text()
  assert "| nf26_seed0 | 95.00 | 10 | 12.5 | done |" in text
  assert "## Failed before training\n\n- broken: error: bad data dir" in text


def test_bad_input_errors(root, tmp_path_factory):
  with pytest.raises(report.ReportError, match="no runs under .*: no metrics.jsonl found"):
    report.write_report(tmp_path_factory.mktemp("empty"))
  with pytest.raises(report.ReportError, match="unknown --metric 'eval/top5'; available: eval/acc"):
    report.write_report(root, metric="eval/top5")
  with pytest.raises(report.ReportError, match="no config field 'model.width'; fields that vary"):
    report.write_report(root, rows=["model.width"])


def test_cli_empty_directory_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "experiments.studies.report", str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert done.returncode == 2
  assert done.stderr.strip() == f"error: no runs under {tmp_path}: no metrics.jsonl found"


def test_check_passes_on_a_fresh_report_and_fails_on_an_altered_one(tmp_path):
  root = tmp_path / "runs"
  for name, seed, acc in [("nf_seed0", 0, 0.8), ("nf_seed1", 1, 0.82)]:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_name": "nf", "train": {"seed": seed}}))
    rows = [
      {"step": 4, "kind": "val", "accuracy": acc - 0.01},
      {"step": 5, "kind": "val", "accuracy": acc - 0.004},
      {"step": 5, "kind": "eval", "accuracy": acc},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "done.json").write_text(json.dumps({"step": 5}))
  out = tmp_path / "study"
  report.write_report(root, out=out)
  assert json.loads((out / "report.json").read_text())["root"] == str(root)
  assert report.check_report(out) == 2
  text = (out / "report.md").read_text()
  assert "+0.60 (not met)" in text  # 0.816 - 0.810 over the last fifth (steps 4-5).
  (out / "report.md").write_text(text.replace("81.00", "81.50"))
  with pytest.raises(report.ReportMismatch, match=r"report.md line \d+ differs from its runs"):
    report.check_report(out)
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.studies.report", "--check", str(out)],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "line" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_a_run_without_its_completion_marker_is_not_counted(root):
  """Its final eval row exists, but the final save failed: no ``done.json``, no number."""
  (root / "nf26_seed0" / "done.json").unlink()
  runs = {run.name: run for run in report.collect_runs(root)}
  assert not runs["nf26_seed0"].complete
  assert runs["nf26_seed0"].final["eval"]["accuracy"] == 0.95
  assert report.math.isnan(runs["nf26_seed0"].value("eval/accuracy"))
  assert runs["nf18_seed0"].complete


def test_a_report_with_other_arguments_is_not_replaced_without_force(root, tmp_path):
  out = tmp_path / "study"
  report.write_report(root, rows=["model.depth"], cols=["model_name"], out=out, force=False)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  report.write_report(root, rows=["model.depth"], cols=["model_name"], out=out, force=False)
  with pytest.raises(
    report.ReportError, match=r"holds a report with rows=\['model.depth'\].*--force"
  ):
    report.write_report(root, rows=["model_name"], out=out, force=False)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  report.write_report(root, rows=["model_name"], out=out, force=True)
  assert json.loads((out / "report.json").read_text())["rows"] == ["model_name"]
