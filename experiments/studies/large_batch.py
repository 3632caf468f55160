r"""The large-batch study: accuracy, stable learning rates and gradient-norm spikes by batch size.

Usage::

  python -m experiments.studies.large_batch ROOT [--out=DIR]
  python -m experiments.studies.large_batch --estimate=results/table1/tuning

ROOT is the study's folder (``results/large_batch``); ``ROOT/tuning`` holds the runs of the
``fashion_mnist.py:large_batch_tune`` sweep: NF-ResNet-18 without and with adaptive gradient
clipping (AGC, Brock, De, Smith & Simonyan 2021, arXiv 2102.06171, Section 4) and
BN-ResNet-18, at batch 256 to 8192, each at ``optimizer.base_lr`` = 0.05, 0.1 and 0.2 (peak
rate ``base_lr * batch / 256``, the linear scaling rule, and a factor 2 either side) and any
rate ``experiments.studies.tune`` added beyond a grid edge. A model is ``model_name``,
``model.depth`` and ``optimizer.agc_clip`` of a run's ``config.json``; a cell is a model at
one batch size. Only validation accuracy is read (``val/accuracy``, the last validation row of
a finished run, as ``experiments.studies.tune`` reads it); the three seeds' test accuracies at
each cell's chosen rate are the study's ``report.md``.

Definitions (``DEFINITIONS``, also written to the JSON):

- **best**: a cell's highest final validation accuracy over its rates (the smaller rate on a
  tie), the choice ``experiments.studies.tune`` makes.
- **stable**: a run that finished (``sweep_status.json`` says done, or ``done.json``; a
  diverged run stops with a non-finite loss and never does) with a final validation accuracy
  within ``STABLE_GAP`` (1 point) of its cell's best. The **largest stable rate** is the
  largest ``base_lr`` of a stable run (and its peak rate, ``base_lr * batch / 256``).
- **spike**: a train row of ``metrics.jsonl`` (the study logs every step) whose ``grad_norm``
  (before clipping) exceeds ``SPIKE_FACTOR`` (10) times the median of the previous
  ``SPIKE_WINDOW`` (20) train rows' finite gradient norms, or is not finite; rows with fewer
  than ``SPIKE_MIN_HISTORY`` (5) earlier rows are not judged. A step logged twice (a resumed
  run) counts once, its last row.
- **break batch**: the smallest batch size at which a model's best validation accuracy is more
  than ``BREAK_DROP`` (1 point) below its best at the smallest batch size (256), or at which
  none of its runs finished; "none" when no batch size does.

Writes ``large_batch.md``, ``large_batch.csv`` (one line per cell), ``large_batch.json``
(definitions, cells, runs and break batches) and ``large_batch.png`` (best validation accuracy
against batch size, one line per model) to ``--out`` (default ROOT). ``--estimate=DIR`` prints
the study's run count and its compute time instead, from the wall time per epoch of the
finished depth-18 runs under DIR (their ``sweep_status.json``). Bad input (a missing folder,
no finished run) is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import cli
from experiments.studies import report, tune
from experiments.studies.plot import plot_groups

TUNING_DIR = "tuning"
OUT_NAME = "large_batch"
METRIC = tune.DEFAULT_METRIC
REFERENCE_BATCH_SIZE = 256  # experiments.optim.REFERENCE_BATCH_SIZE: peak = base * batch / 256.
STABLE_GAP = 0.01
BREAK_DROP = 0.01
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
TOLERANCE = 1e-6  # Accuracies are float32 counts over 5,000 images: compare to 1e-6.
ESTIMATE_DEPTH = 18
MODEL_NAMES = {"nf_resnet": "NF-ResNet", "resnet_v2": "BN-ResNet"}
DEFINITIONS = {
  "metric": METRIC,
  "stable_gap": STABLE_GAP,
  "break_drop": BREAK_DROP,
  "spike_factor": SPIKE_FACTOR,
  "spike_window": SPIKE_WINDOW,
  "spike_min_history": SPIKE_MIN_HISTORY,
}


@dataclasses.dataclass(frozen=True)
class Trial:
  """One tuning run: its model, batch, rates, final validation accuracy and spike count."""

  run: str
  model: str
  batch: int
  accum: int
  base_lr: float
  peak_lr: float
  value: float  # NaN unless finished.
  finished: bool
  spikes: int
  steps: int  # Train rows (logged steps).


@dataclasses.dataclass(frozen=True)
class Cell:
  """A model at one batch size: its runs, by learning rate."""

  model: str
  batch: int
  trials: tuple[Trial, ...]

  @property
  def best(self) -> Trial | None:
    """The finished run with the highest validation accuracy (the smaller rate on a tie)."""
    done = [t for t in self.trials if math.isfinite(t.value)]
    return max(done, key=lambda t: (t.value, -t.base_lr), default=None)

  @property
  def stable(self) -> list[Trial]:
    """Finished runs within ``STABLE_GAP`` of the best."""
    best = self.best
    if best is None:
      return []
    return [
      t
      for t in self.trials
      if math.isfinite(t.value) and best.value - t.value <= STABLE_GAP + TOLERANCE
    ]

  @property
  def largest_stable(self) -> Trial | None:
    return max(self.stable, key=lambda t: t.base_lr, default=None)


def model_label(config: Mapping[str, Any]) -> str:
  """``NF-ResNet-18 + AGC 0.01`` from a flat config."""
  name = str(config.get("model_name"))
  label = f"{MODEL_NAMES.get(name, name)}-{config.get('model.depth')}"
  clip = config.get("optimizer.agc_clip") or 0
  return f"{label} + AGC {clip:g}" if clip else label


def model_order(config: Mapping[str, Any]) -> tuple:
  """NF first, then NF + AGC by threshold, then BN (model names sort that way)."""
  return (
    str(config.get("model_name")),
    config.get("model.depth") or 0,
    config.get("optimizer.agc_clip") or 0,
  )


def peak_lr(config: Mapping[str, Any]) -> float:
  """``base_lr * batch / 256`` (``optimizer.scale_by_batch``), else ``base_lr``."""
  base = float(config["optimizer.base_lr"])
  if config.get("optimizer.scale_by_batch", True):
    return base * config["train.batch_size"] / REFERENCE_BATCH_SIZE
  return base


def grad_norms(path: pathlib.Path) -> list[float]:
  """The ``grad_norm`` of every train row, by step (a step logged twice: its last row)."""
  by_step: dict[int, float] = {}
  for row in report.read_rows(path):
    if row.get("kind", "train") == "train" and "grad_norm" in row:
      value = row["grad_norm"]
      by_step[int(row.get("step", 0))] = float(value) if value is not None else math.nan
  return [by_step[step] for step in sorted(by_step)]


def count_spikes(
  norms: Sequence[float],
  factor: float = SPIKE_FACTOR,
  window: int = SPIKE_WINDOW,
  min_history: int = SPIKE_MIN_HISTORY,
) -> int:
  """Rows above ``factor`` x the median of the previous ``window`` finite norms (or not finite)."""
  spikes = 0
  for i, norm in enumerate(norms):
    history = [n for n in norms[max(0, i - window) : i] if math.isfinite(n)]
    if len(history) < min_history:
      continue
    if not math.isfinite(norm) or norm > factor * statistics.median(history):
      spikes += 1
  return spikes


def read_trials(root: pathlib.Path) -> tuple[list[Trial], dict[str, tuple]]:
  """Every run under ``root`` as a Trial, and each model's sort key.

  Raises:
    report.ReportError: no runs, or a run whose config lacks the batch size or rate.
  """
  trials, order = [], {}
  for run in report.collect_runs(root):
    missing = [k for k in ("train.batch_size", tune.LR_FIELD) if k not in run.config]
    if missing:
      raise report.ReportError(f"run {run.name}: config.json has no {', '.join(missing)}")
    norms = grad_norms(root / run.name / report.METRICS_FILE)
    model = model_label(run.config)
    order[model] = model_order(run.config)
    trials.append(
      Trial(
        run=run.name,
        model=model,
        batch=int(run.config["train.batch_size"]),
        accum=int(run.config.get("train.grad_accum_steps") or 1),
        base_lr=float(run.config[tune.LR_FIELD]),
        peak_lr=peak_lr(run.config),
        value=run.value(METRIC),
        finished=run.complete,
        spikes=count_spikes(norms),
        steps=len(norms),
      )
    )
  return trials, order


def group_cells(trials: Sequence[Trial], order: Mapping[str, tuple]) -> list[Cell]:
  """Cells by model (``order``) and batch size, each cell's runs by learning rate."""
  keys = sorted({(t.model, t.batch) for t in trials}, key=lambda k: (order[k[0]], k[1]))
  return [
    Cell(
      model,
      batch,
      tuple(
        sorted((t for t in trials if (t.model, t.batch) == (model, batch)), key=lambda t: t.base_lr)
      ),
    )
    for model, batch in keys
  ]


def break_batch(model_cells: Sequence[Cell]) -> int | None:
  """The first batch size losing more than ``BREAK_DROP`` against the smallest one (module doc).

  ``None`` when none does, or when the smallest batch size has no finished run.
  """
  ordered = sorted(model_cells, key=lambda c: c.batch)
  reference = ordered[0].best if ordered else None
  if reference is None:
    return None
  for cell in ordered[1:]:
    best = cell.best
    if best is None or reference.value - best.value > BREAK_DROP + TOLERANCE:
      return cell.batch
  return None


@dataclasses.dataclass(frozen=True)
class Analysis:
  """The study's cells, its runs and each model's break batch (``None``: none)."""

  root: str
  cells: list[Cell]
  breaks: dict[str, int | None]

  @property
  def models(self) -> list[str]:
    return list(dict.fromkeys(c.model for c in self.cells))


def analyse(root: str | pathlib.Path) -> Analysis:
  """Reads ``root/tuning`` and computes the cells and break batches.

  Raises:
    report.ReportError: a missing folder, no runs, or no finished run.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise report.ReportError(f"{root} is not a directory")
  tuning = root / TUNING_DIR
  if not tuning.is_dir():
    raise report.ReportError(
      f"{tuning} not found: run the fashion_mnist.py:large_batch_tune sweep into it first "
      "(bash results/run_protocol.sh large_batch)"
    )
  trials, order = read_trials(tuning)
  if not any(t.finished for t in trials):
    raise report.ReportError(f"no finished runs under {tuning} ({len(trials)} runs, none done)")
  cells = group_cells(trials, order)
  models = dict.fromkeys(c.model for c in cells)
  breaks = {m: break_batch([c for c in cells if c.model == m]) for m in models}
  return Analysis(str(root), cells, breaks)


def percent(value: float | None) -> str:
  return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def spikes_text(cell: Cell) -> str:
  """``0.05: 0, 0.1: 2``: spikes per run, by base rate."""
  return ", ".join(f"{t.base_lr:g}: {t.spikes}" for t in cell.trials)


def finite(value: float) -> float | None:
  """``None`` for NaN (an empty CSV field, JSON ``null``)."""
  return value if math.isfinite(value) else None


def cell_row(cell: Cell) -> dict[str, Any]:
  """The CSV/JSON fields of one cell (``None`` where no run finished)."""
  best, stable = cell.best, cell.largest_stable
  return {
    "model": cell.model,
    "batch_size": cell.batch,
    "grad_accum_steps": cell.trials[0].accum,
    "runs": len(cell.trials),
    "finished": sum(t.finished for t in cell.trials),
    "best_val_accuracy": best.value if best else None,
    "best_base_lr": best.base_lr if best else None,
    "largest_stable_base_lr": stable.base_lr if stable else None,
    "largest_stable_peak_lr": stable.peak_lr if stable else None,
    "stable_runs": len(cell.stable),
    "spikes": " ".join(f"{t.base_lr:g}:{t.spikes}" for t in cell.trials),
  }


def markdown(analysis: Analysis) -> str:
  """large_batch.md: the cells, the break batches and every run."""
  lines = [
    f"# Large-batch study: {analysis.root}",
    "",
    f"`{METRIC}` (%) of the tuning runs (seed 0). Best: over the cell's rates. Stable: finished, "
    f"within {100 * STABLE_GAP:g} point of the best. Spike: a step whose gradient norm exceeds "
    f"{SPIKE_FACTOR:g} x the median of the previous {SPIKE_WINDOW} steps. Break: the first batch "
    f"size more than {100 * BREAK_DROP:g} point below the model's best at its smallest batch size "
    "(definitions: `experiments/studies/large_batch.py`).",
    "",
    "| model | batch | accumulation | best (base lr) | largest stable base lr (peak) "
    "| stable / runs | spikes by base lr |",
    "|---|---|---|---|---|---|---|",
  ]
  for cell in analysis.cells:
    best, stable = cell.best, cell.largest_stable
    best_text = f"{percent(best.value)} ({best.base_lr:g})" if best else "failed"
    stable_text = f"{stable.base_lr:g} ({stable.peak_lr:g})" if stable else "none"
    lines.append(
      f"| {cell.model} | {cell.batch} | {cell.trials[0].accum} | {best_text} | {stable_text} | "
      f"{len(cell.stable)} / {len(cell.trials)} | {spikes_text(cell)} |"
    )
  lines += ["", "## Break batch size", "", "| model | break batch size |", "|---|---|"]
  lines += [f"| {m} | {b if b is not None else 'none'} |" for m, b in analysis.breaks.items()]
  lines += [
    "",
    "## Runs",
    "",
    f"| run | base lr | peak lr | {METRIC} | finished | train rows | spikes |",
    "|---|---|---|---|---|---|---|",
  ]
  for cell in analysis.cells:
    for t in cell.trials:
      lines.append(
        f"| {t.run} | {t.base_lr:g} | {t.peak_lr:g} | {percent(t.value)} | "
        f"{'yes' if t.finished else 'no'} | {t.steps} | {t.spikes} |"
      )
  return "\n".join(lines) + "\n"


def plot_cells(path: pathlib.Path, analysis: Analysis) -> None:
  """large_batch.png: best validation accuracy against batch size, a line per model."""
  groups = []
  for cell in analysis.cells:
    best = cell.best
    groups.append(
      report.Group(
        (json.dumps(cell.batch),),
        (json.dumps(cell.model),),
        [t.run for t in cell.trials],
        [best.value] if best else [],
      )
    )
  plot_groups(path, groups, METRIC, ["train.batch_size"], ["model_name"])


def write(analysis: Analysis, out: str | pathlib.Path) -> pathlib.Path:
  """Writes large_batch.md, .csv, .json and .png to ``out``; returns the .md path."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  rows = [cell_row(c) for c in analysis.cells]
  with (out / f"{OUT_NAME}.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  payload = {
    "root": analysis.root,
    "definitions": DEFINITIONS,
    "cells": rows,
    "break_batch": analysis.breaks,
    "runs": [
      {**dataclasses.asdict(t), "value": finite(t.value)} for c in analysis.cells for t in c.trials
    ],
  }
  (out / f"{OUT_NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")
  plot_cells(out / f"{OUT_NAME}.png", analysis)
  path = out / f"{OUT_NAME}.md"
  path.write_text(markdown(analysis))
  return path


def seconds_per_epoch(
  reference: str | pathlib.Path, depth: int = ESTIMATE_DEPTH
) -> tuple[float, int]:
  """Median wall time per epoch of the finished, trained (not reused) runs at ``depth``.

  Returns the median and the number of runs it is over.

  Raises:
    report.ReportError: no such run under ``reference``.
  """
  per_epoch = [
    run.status["wall_s"] / run.config["train.num_epochs"]
    for run in report.collect_runs(reference)
    if run.status.get("status") == "done"
    and not run.status.get("reused")
    and run.status.get("wall_s")
    and run.config.get("model.depth") == depth
    and run.config.get("train.num_epochs")
  ]
  if not per_epoch:
    raise report.ReportError(f"no finished depth-{depth} run with a wall time under {reference}")
  return statistics.median(per_epoch), len(per_epoch)


def estimate(reference: str | pathlib.Path) -> str:
  """The study's runs (tuning grid + new seeds) and their compute time, as one text line."""
  from experiments.configs import fashion_mnist, small_images  # Deferred: imports the models.

  grid = fashion_mnist.get_sweep("large_batch_tune")
  cells = small_images.protocol_cells("large_batch", fashion_mnist.PROTOCOL)
  seeds = len(cells) * (fashion_mnist.PROTOCOL.seeds - 1)  # Seed 0 is the tuning run.
  epochs = {e.overrides["train.num_epochs"] for e in grid}
  if len(epochs) != 1:
    raise report.ReportError(f"large_batch_tune entries differ in epochs: {sorted(epochs)}")
  epoch_s, n = seconds_per_epoch(reference)
  (num_epochs,) = epochs
  hours = (len(grid) + seeds) * num_epochs * epoch_s / 3600
  return (
    f"large_batch: {len(grid)} tuning runs ({len(cells)} cells) + {seeds} new seed runs = "
    f"{len(grid) + seeds} runs of {num_epochs:g} epochs; {epoch_s:.1f} s per epoch (median of "
    f"{n} depth-{ESTIMATE_DEPTH} runs under {reference}) -> about {hours:.1f} hours, plus "
    f"{num_epochs * epoch_s / 60:.0f} min per rate a grid edge adds"
  )


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.UsageParser(
    prog="python -m experiments.studies.large_batch",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("root", nargs="?", help="the study folder (with tuning/)")
  parser.add_argument("--out", default=None, help="output directory (default: ROOT)")
  parser.add_argument("--estimate", default=None, help="print the compute estimate from DIR's runs")
  args = parser.parse_args(argv)
  if (args.root is None) == (args.estimate is None):
    return cli.fail("give either ROOT or --estimate=DIR")
  try:
    if args.estimate is not None:
      print(estimate(args.estimate))
      return 0
    analysis = analyse(args.root)
  except report.ReportError as error:
    return cli.fail(str(error))
  path = write(analysis, args.out or args.root)
  print(f"large_batch: {len(analysis.cells)} cells, {len(analysis.models)} models -> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
