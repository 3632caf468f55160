r"""Picks each cell's learning rate from a tuning sweep, on validation accuracy.

Usage::

  python -m experiments.studies.tune ROOT --out=DIR [--metric=val/accuracy]

ROOT holds the runs of a ``*_tune`` sweep (``experiments.configs.sweeps.lr_grid``): run
``<cell>_lr<value>`` trains cell ``<cell>`` at ``optimizer.base_lr = value``, seed 0, and
logs its validation accuracy (``data.validation_examples``). For every cell the learning
rate with the best final validation accuracy wins (the smaller one on a tie). Writes
``tuning.csv`` (one line per run: cell, learning rate, validation accuracy, chosen) and
``tuning.md`` to DIR; the seeds sweep of the study reads ``tuning.csv``
(``experiments.configs.sweeps.tuned_seeds``). Test accuracy is not read: choices never
look at the test split (docs/reproducing.md).

A winner at the edge of its cell's grid is not trusted: its row gets ``next_lr``, the
rate one factor of 2 further out, which the ``*_tune`` sweep then adds (up to
``MAX_EXTENSIONS`` rates beyond the grid); the seeds sweep refuses to start while a cell
has a ``next_lr``. Rerun the tuning sweep and this tool until no cell has one.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
import re
import sys
from collections.abc import Sequence

from experiments import cli
from experiments.configs import sweeps
from experiments.studies import report

TUNING_CSV = "tuning.csv"
TUNING_MD = "tuning.md"
LR_FIELD = "optimizer.base_lr"
CELL_PATTERN = re.compile(r"^(?P<cell>.+)_lr(?P<lr>[0-9.e+-]+)$")

DEFAULT_METRIC = "val/accuracy"
GRID_POINTS = len(sweeps.LR_GRID_FACTORS)
MAX_EXTENSIONS = 2
"""Rates a cell may get beyond its grid when its winner sits at an edge."""


@dataclasses.dataclass(frozen=True)
class Trial:
  """One tuning run: its cell, learning rate, value and convergence gain."""

  cell: str
  run: str
  learning_rate: float
  value: float
  gain: float
  chosen: bool = False
  next_lr: float | None = None


def next_rate(cell_trials: Sequence[Trial], winner: Trial) -> float | None:
  """The rate to try next when ``winner`` is the lowest or highest tried rate of its cell.

  ``None`` when the winner is inside the grid, the cell's grid is not complete yet (fewer
  than ``GRID_POINTS`` runs) or it already has ``MAX_EXTENSIONS`` rates beyond the grid.
  """
  rates = sorted(t.learning_rate for t in cell_trials)
  if not GRID_POINTS <= len(rates) < GRID_POINTS + MAX_EXTENSIONS:
    return None
  if winner.learning_rate == rates[-1]:
    return round(winner.learning_rate * 2, 10)
  if winner.learning_rate == rates[0]:
    return round(winner.learning_rate / 2, 10)
  return None


def trials(root: str | pathlib.Path, metric: str) -> list[Trial]:
  """The tuning runs under ``root``, one ``Trial`` per run, the winner of each cell marked.

  Raises:
    report.ReportError: no runs, a run name without ``_lr<value>``, or no such metric.
  """
  runs = report.collect_runs(root)
  report.check_metric(runs, metric)
  found = []
  for run in runs:
    match = CELL_PATTERN.match(pathlib.PurePath(run.name).name)
    if match is None:
      raise report.ReportError(f"run {run.name!r} is not named <cell>_lr<value>")
    lr = float(run.config.get(LR_FIELD, match["lr"]))
    found.append(Trial(match["cell"], run.name, lr, run.value(metric), run.last_fifth_gain()))
  best: dict[str, Trial] = {}
  for trial in sorted(found, key=lambda t: (t.cell, t.learning_rate)):
    score = trial.value if math.isfinite(trial.value) else -math.inf
    held = best.get(trial.cell)
    if held is None or score > (held.value if math.isfinite(held.value) else -math.inf):
      best[trial.cell] = trial
  ordered = sorted(found, key=lambda t: (t.cell, t.learning_rate))
  out = []
  for t in ordered:
    if best[t.cell] is t:
      t = dataclasses.replace(
        t, chosen=True, next_lr=next_rate([u for u in found if u.cell == t.cell], t)
      )
    out.append(t)
  return out


def write_tuning(found: Sequence[Trial], out: str | pathlib.Path, metric: str) -> None:
  """``tuning.csv`` and ``tuning.md`` for the trials."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  with (out / TUNING_CSV).open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["cell", "base_lr", metric, "last_fifth_gain", "chosen", "run", "next_lr"])
    for t in found:
      next_lr = "" if t.next_lr is None else t.next_lr
      writer.writerow([t.cell, t.learning_rate, t.value, t.gain, int(t.chosen), t.run, next_lr])
  lines = [
    f"# Tuning: {metric} of each learning rate (seed 0); the chosen one in bold",
    "",
    f"| cell | base_lr | {metric} (%) | validation gain over the last fifth (points) |",
    "|---|---|---|---|",
  ]
  for t in found:
    lr = f"**{t.learning_rate:g}**" if t.chosen else f"{t.learning_rate:g}"
    if t.next_lr is not None:
      lr += f" (grid edge: {t.next_lr:g} next)"
    value = report.format_value(t.value, metric)
    lines.append(f"| {t.cell} | {lr} | {value} | {report.format_gain(t.gain)} |")
  (out / TUNING_MD).write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.UsageParser(prog="python -m experiments.studies.tune", description=__doc__)
  parser.add_argument("root", help="the tuning runs")
  parser.add_argument("--out", default=None, help="output directory (default: ROOT)")
  parser.add_argument("--metric", default=DEFAULT_METRIC, help="KIND/NAME compared between runs")
  args = parser.parse_args(argv)
  try:
    found = trials(args.root, args.metric)
  except report.ReportError as error:
    return cli.fail(str(error))
  out = args.out or args.root
  write_tuning(found, out, args.metric)
  cells = len({t.cell for t in found})
  print(f"tune: {len(found)} runs, {cells} cells -> {pathlib.Path(out) / TUNING_CSV}")
  edges = [f"{t.cell} ({t.next_lr:g})" for t in found if t.next_lr is not None]
  if edges:
    print(f"tune: best rate at a grid edge, rerun the tuning sweep for: {', '.join(edges)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
