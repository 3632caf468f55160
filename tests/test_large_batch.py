"""The large-batch study: its sweeps, its analysis on hand-made runs, a smoke run, bad input."""

import csv
import json
import math
import pathlib

import pytest

from experiments import optim
from experiments.configs import fashion_mnist, small_images, sweeps
from experiments.studies import large_batch, sweep

REPO = pathlib.Path(__file__).parents[1]
CONFIG = REPO / "experiments" / "configs" / "fashion_mnist.py"
BATCHES = (256, 512, 1024, 2048, 4096, 8192)
ACCUM = {256: 1, 512: 1, 1024: 1, 2048: 2, 4096: 4, 8192: 8}
CLIPS = (0.01, 0.02, 0.04, 0.08, 0.16)
MODELS = ("nf18", *(f"nf18_agc{c:g}" for c in CLIPS), "bn18")


@pytest.fixture
def results(tmp_path, monkeypatch):
  """An empty results folder in place of the repository's (no tuning.csv yet)."""
  monkeypatch.setattr(small_images, "RESULTS_DIR", tmp_path)
  return tmp_path


def test_tuning_sweep_is_every_model_batch_and_rate_at_the_same_epochs(results):
  loaded = sweep.load_sweep(f"{CONFIG}:large_batch_tune")
  entries = loaded.entries
  assert [e.name for e in entries] == [
    f"{m}_batch{b}_lr{lr}" for m in MODELS for b in BATCHES for lr in ("0.05", "0.1", "0.2")
  ]
  for entry in entries:
    config = sweep.entry_config(loaded, entry)
    batch = config.train.batch_size
    assert config.train.grad_accum_steps == ACCUM[batch]
    assert config.train.num_epochs == 10.0 and config.train.seed == 0
    assert config.train.log_every == 1 and config.data.validation_examples == 5000
    assert (config.model.depth, config.model.width) == (18, 0.25)
    clip = float(entry.name.split("_agc")[1].split("_")[0]) if "_agc" in entry.name else 0.0
    assert config.optimizer.agc_clip == clip
    assert config.model_name == ("resnet_v2" if entry.name.startswith("bn") else "nf_resnet")
    peak = optim.make_schedule(config, 55000).peak_lr
    rule = 0.1 * batch / 256  # The linear scaling rule, then a factor 2 either side.
    assert peak == pytest.approx(rule * {0.05: 0.5, 0.1: 1.0, 0.2: 2.0}[config.optimizer.base_lr])
  assert large_batch.REFERENCE_BATCH_SIZE == optim.REFERENCE_BATCH_SIZE
  assert not optim.is_clipped("nf_resnet/classifier", "w")  # AGC leaves the classifier out.
  assert optim.is_clipped("nf_resnet/stage0_block0/conv0", "w")


def test_seeds_sweep_runs_the_chosen_rates_and_reuses_seed_0(results):
  grid = fashion_mnist.get_sweep("large_batch_tune")
  lines = ["cell,base_lr,val/accuracy,last_fifth_gain,chosen,run,next_lr"]
  for entry in grid:
    cell, lr = entry.name.rsplit("_lr", 1)
    lines.append(f"{cell},{lr},0.9,0.001,{int(lr == '0.1')},{entry.name},")
  (results / "large_batch").mkdir()
  (results / "large_batch" / "tuning.csv").write_text("\n".join(lines) + "\n")
  seeds = fashion_mnist.get_sweep("large_batch")
  assert len(seeds) == 42 * 3 and {e.overrides["optimizer.base_lr"] for e in seeds} == {0.1}
  reuse = {e.name: e.reuse for e in seeds if e.reuse}
  assert len(reuse) == 42
  assert reuse["nf18_agc0.04_batch4096_seed0"] == "../tuning/nf18_agc0.04_batch4096_lr0.1"


def test_accumulation_keeps_micro_batches_at_most_the_limit():
  assert [sweeps.accumulation_steps(b, 1024) for b in BATCHES] == [1, 1, 1, 2, 4, 8]
  assert sweeps.accumulation_steps(3000, 1024) == 3  # 1,000 per micro-batch.
  assert sweeps.accumulation_steps(7, 2) == 7  # The fewest micro-batches that divide 7.


def test_spikes_against_the_running_median():
  # Index 2 has too little history; 20 and 15 are spikes; 9 x median 1 is not; NaN is.
  norms = [1, 1, 30, 1, 1, 1, 1, 20, 1, 9, 1, 15, math.nan, 1]
  assert large_batch.count_spikes(norms) == 3
  assert large_batch.count_spikes([1.0] * 25 + [5.0] * 20 + [40.0]) == 0  # Median moved to 5.


def write_run(root, name, model, batch, lr, vals, norms, done=True, clip=0.0, marker="done"):
  """A tuning run: config.json, train rows with ``norms``, val rows ``vals`` and a marker.

  ``marker``: "done" writes done.json, "status" a sweep_status.json; a run not ``done`` gets a
  failed sweep status (diverged)."""
  run = root / name
  run.mkdir(parents=True)
  config = {
    "model_name": model,
    "model": {"depth": 18},
    "train": {"batch_size": batch, "grad_accum_steps": max(1, batch // 1024), "seed": 0},
    "optimizer": {"base_lr": lr, "agc_clip": clip, "scale_by_batch": True},
  }
  (run / "config.json").write_text(json.dumps(config))
  rows = [{"step": i + 1, "kind": "train", "grad_norm": n} for i, n in enumerate(norms)]
  rows += [{"step": 2 * (i + 1), "kind": "val", "accuracy": v} for i, v in enumerate(vals)]
  if done:
    rows.append({"step": len(norms), "kind": "eval", "accuracy": 0.5})
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if not done:
    (run / "sweep_status.json").write_text('{"status": "failed", "returncode": 3}')
  elif marker == "done":
    (run / "done.json").write_text(json.dumps({"step": len(norms)}))
  else:
    (run / "sweep_status.json").write_text('{"status": "done", "wall_s": 10.0}')


QUIET = [1.0] * 8
SPIKY = [1.0] * 10 + [20.0] + [1.0] * 5 + [15.0]  # Two spikes.


@pytest.fixture
def study(tmp_path):
  tuning = tmp_path / "large_batch" / "tuning"
  nf, bn = "nf_resnet", "resnet_v2"
  for lr, val in [(0.05, 0.90), (0.1, 0.91), (0.2, 0.905)]:
    write_run(tuning, f"nf18_batch256_lr{lr:g}", nf, 256, lr, [0.5, val], QUIET)
  write_run(tuning, "nf18_batch2048_lr0.05", nf, 2048, 0.05, [0.905], QUIET, marker="status")
  write_run(tuning, "nf18_batch2048_lr0.1", nf, 2048, 0.1, [0.895], QUIET, marker="status")
  # Diverged: its validation accuracy is never read.
  write_run(tuning, "nf18_batch2048_lr0.2", nf, 2048, 0.2, [0.95], [1.0] * 6 + [50.0], done=False)
  for lr, val in [(0.05, 0.89), (0.1, 0.85), (0.2, 0.80)]:
    write_run(
      tuning, f"nf18_batch8192_lr{lr:g}", nf, 8192, lr, [val], SPIKY if lr == 0.2 else QUIET
    )
  write_run(tuning, "nf18_agc0.01_batch256_lr0.1", nf, 256, 0.1, [0.90], QUIET, clip=0.01)
  write_run(tuning, "nf18_agc0.01_batch8192_lr0.1", nf, 8192, 0.1, [0.895], QUIET, clip=0.01)
  write_run(tuning, "bn18_batch256_lr0.1", bn, 256, 0.1, [0.92], QUIET)
  write_run(tuning, "bn18_batch512_lr0.1", bn, 512, 0.1, [0.3], QUIET, done=False)
  # A resumed run logged step 7 twice: the last row counts, so no spike.
  with (tuning / "bn18_batch256_lr0.1" / "metrics.jsonl").open("a") as f:
    f.write(json.dumps({"step": 7, "kind": "train", "grad_norm": 100.0}) + "\n")
    f.write(json.dumps({"step": 7, "kind": "train", "grad_norm": 1.0}) + "\n")
  return tmp_path / "large_batch"


def test_analysis_of_hand_made_runs(study):
  analysis = large_batch.analyse(study)
  cells = {(c.model, c.batch): c for c in analysis.cells}
  assert list(cells) == [
    ("NF-ResNet-18", 256),
    ("NF-ResNet-18", 2048),
    ("NF-ResNet-18", 8192),
    ("NF-ResNet-18 + AGC 0.01", 256),
    ("NF-ResNet-18 + AGC 0.01", 8192),
    ("BN-ResNet-18", 256),
    ("BN-ResNet-18", 512),
  ]
  summary = {
    key: (c.best and c.best.base_lr, c.largest_stable and c.largest_stable.peak_lr)
    for key, c in cells.items()
  }
  assert summary[("NF-ResNet-18", 256)] == (0.1, 0.2)  # 0.90 is exactly 1 point below: stable.
  assert summary[("NF-ResNet-18", 2048)] == (0.05, 0.8)  # 0.1 x 2048 / 256; 0.2 diverged.
  assert summary[("NF-ResNet-18", 8192)] == (0.05, 1.6)
  assert summary[("BN-ResNet-18", 512)] == (None, None)
  spikes = {t.run: t.spikes for c in analysis.cells for t in c.trials}
  assert spikes["nf18_batch8192_lr0.2"] == 2 and spikes["nf18_batch2048_lr0.2"] == 1
  assert sum(spikes.values()) == 3
  assert analysis.breaks == {
    "NF-ResNet-18": 8192,  # 2 points below batch 256 (89.0 vs 91.0); 2048 loses 0.5.
    "NF-ResNet-18 + AGC 0.01": None,
    "BN-ResNet-18": 512,  # No finished run.
  }


def test_outputs_written(study):
  assert large_batch.main([str(study)]) == 0
  text = (study / "large_batch.md").read_text()
  assert (
    "| NF-ResNet-18 | 2048 | 2 | 90.50 (0.05) | 0.1 (0.8) | 2 / 3 | 0.05: 0, 0.1: 0, 0.2: 1 |"
    in (text)
  )
  assert "| BN-ResNet-18 | 512 | 1 | failed | none | 0 / 1 | 0.1: 0 |" in text
  assert "| NF-ResNet-18 | 8192 |\n" in text and "| NF-ResNet-18 + AGC 0.01 | none |" in text
  assert "| nf18_batch2048_lr0.2 | 0.2 | 1.6 | n/a | no | 7 | 1 |" in text
  with (study / "large_batch.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 7 and rows[2]["largest_stable_base_lr"] == "0.05"
  assert rows[2]["spikes"] == "0.05:0 0.1:0 0.2:2"
  payload = json.loads((study / "large_batch.json").read_text())
  assert payload["break_batch"]["BN-ResNet-18"] == 512 and rows[6]["best_val_accuracy"] == ""
  assert payload["cells"][6]["best_val_accuracy"] is None and payload["runs"][5]["value"] is None
  assert payload["definitions"]["spike_factor"] == 10.0 and len(payload["runs"]) == 13
  assert (study / "large_batch.png").read_bytes()[:4] == b"\x89PNG"


def one_line_error(capsys, argv) -> str:
  assert large_batch.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  return err.strip()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
  missing = tmp_path / "missing"
  assert one_line_error(capsys, [str(missing)]) == f"error: {missing} is not a directory"
  assert one_line_error(capsys, [str(tmp_path)]).startswith(
    f"error: {tmp_path / 'tuning'} not found: run the fashion_mnist.py:large_batch_tune sweep"
  )
  write_run(tmp_path / "tuning", "nf18_batch256_lr0.1", "nf_resnet", 256, 0.1, [0.4], QUIET, False)
  assert one_line_error(capsys, [str(tmp_path)]) == (
    f"error: no finished runs under {tmp_path / 'tuning'} (1 runs, none done)"
  )
  assert one_line_error(capsys, []) == "error: give either ROOT or --estimate=DIR"


def test_estimate_from_the_wall_time_per_epoch(results, tmp_path):
  reference = tmp_path / "reference"
  for name, depth, wall in [("a", 18, 300.0), ("b", 18, 500.0), ("c", 18, 400.0), ("d", 26, 9e3)]:
    run = reference / name
    run.mkdir(parents=True)
    config = {"model": {"depth": depth}, "train": {"num_epochs": 10.0}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("")
    (run / "sweep_status.json").write_text(json.dumps({"status": "done", "wall_s": wall}))
  assert large_batch.seconds_per_epoch(reference) == (40.0, 3)
  assert large_batch.estimate(reference) == (
    "large_batch: 126 tuning runs (42 cells) + 84 new seed runs = 210 runs of 10 epochs; "
    f"40.0 s per epoch (median of 3 depth-18 runs under {reference}) -> about 23.3 hours, "
    "plus 7 min per rate a grid edge adds"
  )


def test_smoke_run_of_a_study_entry_then_its_analysis(results, tmp_path):
  """An accumulated AGC entry, shrunk to 4 steps of batch 16 in 2 micro-batches, end to end."""
  from experiments.train import train_and_evaluate

  loaded = sweep.load_sweep(f"{CONFIG}:large_batch_tune", only=["nf18_agc0.01_batch8192_lr0.1"])
  (entry,) = loaded.entries
  config = sweep.entry_config(loaded, entry.with_arg("smoke"))
  config.train.update(batch_size=16, eval_batch_size=16, num_steps=4, num_devices=1)
  config.data.validation_examples = 16
  assert config.train.grad_accum_steps == 8 and config.optimizer.agc_clip == 0.01
  config.train.grad_accum_steps = 2
  root = tmp_path / "large_batch"
  train_and_evaluate(config, root / "tuning" / entry.name)
  analysis = large_batch.analyse(root)
  ((cell,),) = [analysis.cells]
  (trial,) = cell.trials
  assert (cell.model, cell.batch, trial.accum, trial.steps) == ("NF-ResNet-18 + AGC 0.01", 16, 2, 4)
  assert trial.finished and 0.0 <= trial.value <= 1.0 and trial.peak_lr == pytest.approx(0.1 / 16)
  assert large_batch.write(analysis, root).is_file()
