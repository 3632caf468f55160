"""``experiments.studies.tune``: the protocol's learning-rate choice on validation accuracy."""

import csv
import json

import pytest

from experiments.studies import report, tune


def write_run(root, name, lr, val, test):
  run = root / name
  run.mkdir(parents=True)
  config = {"model_name": "nf_resnet", "optimizer": {"base_lr": lr}, "train": {"seed": 0}}
  (run / "config.json").write_text(json.dumps(config))
  rows = [
    {"step": 8, "kind": "val", "accuracy": val - 0.002},
    {"step": 10, "kind": "val", "accuracy": val},
    {"step": 10, "kind": "eval", "accuracy": test},
  ]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (run / "done.json").write_text(json.dumps({"step": 10}))


def test_best_validation_accuracy_wins_and_test_is_never_read(tmp_path):
  root = tmp_path / "tuning"
  # The best test accuracy (lr 0.2) is not the best validation accuracy (lr 0.1).
  for lr, val, test in [(0.05, 0.80, 0.70), (0.1, 0.85, 0.71), (0.2, 0.84, 0.99)]:
    write_run(root, f"nf18_lr{lr:g}", lr, val, test)
  write_run(root, "bn18_lr0.1", 0.1, 0.9, 0.9)
  found = tune.trials(root, "val/accuracy")
  chosen = {t.cell: t.learning_rate for t in found if t.chosen}
  assert chosen == {"nf18": 0.1, "bn18": 0.1}
  tune.write_tuning(found, tmp_path, "val/accuracy")
  with (tmp_path / "tuning.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert [(r["cell"], r["base_lr"], r["chosen"]) for r in rows] == [
    ("bn18", "0.1", "1"),
    ("nf18", "0.05", "0"),
    ("nf18", "0.1", "1"),
    ("nf18", "0.2", "0"),
  ]
  text = (tmp_path / "tuning.md").read_text()
  assert "| nf18 | **0.1** | 85.00 | +0.20 (met) |" in text
  assert "99" not in text  # No test accuracy.


def test_bad_input_is_one_line(tmp_path, capsys):
  write_run(tmp_path, "nf18", 0.1, 0.8, 0.8)
  with pytest.raises(report.ReportError, match="is not named <cell>_lr<value>"):
    tune.trials(tmp_path, "val/accuracy")
  assert tune.main([str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_winner_at_the_grid_edge_proposes_the_next_rate(tmp_path):
  root = tmp_path / "tuning"
  for lr, val in [(0.05, 0.80), (0.1, 0.82), (0.2, 0.84)]:
    write_run(root, f"nf18_lr{lr:g}", lr, val, 0.5)
  for lr, val in [(0.05, 0.86), (0.1, 0.85)]:  # Grid not complete: no proposal yet.
    write_run(root, f"bn18_lr{lr:g}", lr, val, 0.5)
  for lr, val in [(0.05, 0.83), (0.1, 0.82), (0.2, 0.81)]:
    write_run(root, f"fixup18_lr{lr:g}", lr, val, 0.5)
  chosen = {t.cell: t for t in tune.trials(root, "val/accuracy") if t.chosen}
  assert chosen["nf18"].next_lr == 0.4
  assert chosen["bn18"].next_lr is None
  assert chosen["fixup18"].next_lr == 0.025
  for lr, val in [(0.4, 0.85), (0.8, 0.86)]:  # Two rates beyond the grid: no third.
    write_run(root, f"nf18_lr{lr:g}", lr, val, 0.5)
  found = tune.trials(root, "val/accuracy")
  nf = [t for t in found if t.cell == "nf18" and t.chosen]
  assert nf[0].learning_rate == 0.8 and nf[0].next_lr is None
  tune.write_tuning(found, tmp_path, "val/accuracy")
  assert "| fixup18 | **0.05** (grid edge: 0.025 next) |" in (tmp_path / "tuning.md").read_text()
