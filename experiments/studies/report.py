r"""Collects the runs of a sweep into a table, a CSV file and a plot.

Usage::

  python -m experiments.studies.report ROOT [--metric=eval/accuracy] [--rows=model.depth] \
    [--cols=model_name] [--out=DIR]

Every directory under ROOT holding a ``metrics.jsonl`` is a run; its
``config.json`` says what it was. Runs that differ only in ``train.seed`` are
aggregated as the paper does: median, with the min-max spread and the number
of seeds. ``--rows``/``--cols`` pick the config fields of the table's rows and
columns (default rows: the fields that vary between runs, redundant ones
dropped; no column field). Runs that log a validation split (rows of kind "val") also
get the convergence check of the reproduction protocol (docs/reproducing.md): the gain of
the best validation accuracy over the last fifth of training, "met" when below
``CONVERGED_GAIN`` (0.3 points). A run without the metric or not complete (failed,
diverged, still running) counts as failed and is listed; a run is complete when
its ``sweep_status.json`` says done or, without one, when it has ``done.json`` (written
after the final checkpoint is saved). Writes ``report.md``, ``report.csv`` and ``report.png`` to
``--out`` (default ROOT), and ``report.json`` with the arguments.

``python -m experiments.studies.report --check DIR`` recomputes the report in DIR from the
raw ``metrics.jsonl`` files with the arguments of its ``report.json`` and exits 1 with one
``error:`` line naming the first number that differs.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import pathlib
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from experiments import cli, resume_check
from experiments.cli import fail
from experiments.studies.plot import label, plot_groups

USAGE_ERROR = cli.USAGE_ERROR
REPORT_DIFFERS = 1
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
DONE_FILE = "done.json"
STATUS_FILE = "sweep_status.json"  # Written by experiments.studies.sweep.
SEED_FIELD = "train.seed"
FIELD_ORDER = ("model_name", "model.", "data.", "train.", "optimizer.")

METRIC = flags.DEFINE_string("metric", "eval/accuracy", "KIND/NAME of the final row.")
ROWS = flags.DEFINE_list("rows", [], "Config fields of the table rows (default: automatic).")
COLS = flags.DEFINE_list("cols", [], "Config fields of the table columns (default: none).")
OUT = flags.DEFINE_string("out", None, "Output directory (default: ROOT).")
CHECK = flags.DEFINE_bool("check", False, "Recompute the report in DIR and compare (exit 1).")
FORCE = flags.DEFINE_bool("force", False, "Replace a report written with other arguments.")
ARGS_FILE = "report.json"
CHECKED_FILES = ("report.md", "report.csv")
CONVERGED_GAIN = 0.003  # Validation accuracy gain over the last fifth: < 0.3 points.
LAST_FIFTH = 0.8


class ReportError(ValueError):
  """Nothing to report, or a field or metric that the runs do not have."""


class ReportMismatch(ReportError):
  """A committed report that its runs no longer give (``--check``)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: its name (path under ROOT), flat config and final metrics."""

  name: str
  config: Mapping[str, Any]
  final: Mapping[str, Mapping[str, Any]]  # kind -> the row of that kind with the largest step.
  status: Mapping[str, Any]
  val_curve: tuple[tuple[int, float], ...] = ()  # (step, accuracy) of the "val" rows.
  done: bool = False  # ``done.json`` exists: written after the final checkpoint was saved.

  def last_fifth_gain(self) -> float:
    """How much the best validation accuracy so far rose over the last fifth of training.

    ``max`` over all validation rows minus ``max`` over those up to 80% of the run (NaN
    without validation rows, or without one in the first four fifths). The best-so-far
    curve is used rather than two single evaluations, whose noise on a 5,000-image split
    (about 0.4 points) would decide the check on its own.
    """
    if not self.val_curve:
      return math.nan
    last_step = self.val_curve[-1][0]
    before = [acc for step, acc in self.val_curve if step <= LAST_FIFTH * last_step]
    if not before:
      return math.nan
    return max(acc for _, acc in self.val_curve) - max(before)

  @property
  def last_step(self) -> int:
    return max((row.get("step", 0) for row in self.final.values()), default=0)

  @property
  def complete(self) -> bool:
    """Finished: its sweep status says done (exit 0, so after the final save), or it has
    ``done.json``. A run that crashed after its final evaluation (a failed last save) is not.
    """
    if self.status.get("status"):
      return self.status["status"] == "done"
    return self.done

  def value(self, metric: str) -> float:
    """The metric (``KIND/NAME``) of the run's last row of that kind.

    NaN when absent or when the run is not complete (failed, diverged, still running).
    """
    if not self.complete:
      return math.nan
    kind, _, name = metric.partition("/")
    value = self.final.get(kind, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs sharing the row and column values: their metric values and summary."""

  row: tuple
  col: tuple
  runs: list[str]
  values: list[float]  # Finite values only.

  @property
  def failed(self) -> int:
    return len(self.runs) - len(self.values)

  @property
  def median(self) -> float:
    return statistics.median(self.values) if self.values else math.nan

  @property
  def low(self) -> float:
    return min(self.values) if self.values else math.nan

  @property
  def high(self) -> float:
    return max(self.values) if self.values else math.nan


def read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a ``metrics.jsonl`` (a partial last line of a killed process is skipped)."""
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


def final_rows(path: pathlib.Path) -> dict[str, dict[str, Any]]:
  """For each row kind ("train", "eval", "val"), the row with the largest step."""
  final: dict[str, dict[str, Any]] = {}
  for row in read_rows(path):
    kind = row.get("kind", "train")
    if kind not in final or row.get("step", 0) >= final[kind].get("step", 0):
      final[kind] = row
  return final


def val_curve(path: pathlib.Path) -> tuple[tuple[int, float], ...]:
  """``(step, accuracy)`` of every validation row, by step."""
  rows = [r for r in read_rows(path) if r.get("kind") == "val" and "accuracy" in r]
  return tuple(sorted((int(r["step"]), float(r["accuracy"])) for r in rows))


def collect_runs(root: str | pathlib.Path) -> list[Run]:
  """Every run under ``root`` (directories with ``metrics.jsonl``), sorted by name.

  Raises:
    ReportError: ``root`` is missing or holds no run.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ReportError(f"{root} is not a directory")
  runs = []
  for metrics in sorted(root.rglob(METRICS_FILE)):
    run_dir = metrics.parent
    runs.append(
      Run(
        name=str(run_dir.relative_to(root)) if run_dir != root else root.name,
        config=resume_check.flatten(read_json(run_dir / CONFIG_FILE)),
        final=final_rows(metrics),
        status=read_json(run_dir / STATUS_FILE),
        val_curve=val_curve(metrics),
        done=(run_dir / DONE_FILE).is_file(),
      )
    )
  if not runs:
    raise ReportError(f"no runs under {root}: no {METRICS_FILE} found")
  return runs


def failed_without_metrics(root: str | pathlib.Path) -> list[tuple[str, str]]:
  """Sweep entries that failed before writing any metrics: ``(name, error)``."""
  root = pathlib.Path(root)
  found = []
  for status_path in sorted(root.rglob(STATUS_FILE)):
    status = read_json(status_path)
    if status.get("status") == "failed" and not (status_path.parent / METRICS_FILE).exists():
      found.append((str(status_path.parent.relative_to(root)), status.get("error", "")))
  return found


def varying_fields(runs: Sequence[Run]) -> list[str]:
  """Config fields whose values differ between runs, in FIELD_ORDER."""
  keys = sorted({k for run in runs for k in run.config})
  varying = [k for k in keys if len({json.dumps(run.config.get(k)) for run in runs}) > 1]
  return sorted(varying, key=field_rank)


def field_rank(field: str) -> tuple[int, str]:
  for rank, prefix in enumerate(FIELD_ORDER):
    if field == prefix or (prefix.endswith(".") and field.startswith(prefix)):
      return rank, field
  return len(FIELD_ORDER), field


def default_rows(runs: Sequence[Run], cols: Sequence[str]) -> list[str]:
  """Varying fields (not the seed, not ``cols``), keeping only those that split groups further."""
  chosen: list[str] = []
  count = len(group_keys(runs, list(cols)))
  for field in varying_fields(runs):
    if field == SEED_FIELD or field in cols:
      continue
    new_count = len(group_keys(runs, [*chosen, *cols, field]))
    if new_count > count:
      chosen.append(field)
      count = new_count
  return chosen


def group_keys(runs: Sequence[Run], fields: Sequence[str]) -> set[tuple]:
  return {key_of(run, fields) for run in runs}


def key_of(run: Run, fields: Sequence[str]) -> tuple:
  return tuple(json.dumps(run.config.get(f)) for f in fields)


def aggregate(
  runs: Sequence[Run], metric: str, rows: Sequence[str], cols: Sequence[str]
) -> list[Group]:
  """Groups runs by row and column field values (in first-seen order)."""
  groups: dict[tuple, Group] = {}
  for run in runs:
    key = (key_of(run, rows), key_of(run, cols))
    group = groups.setdefault(key, Group(key[0], key[1], [], []))
    group.runs.append(run.name)
    value = run.value(metric)
    if math.isfinite(value):
      group.values.append(value)
  return sorted(groups.values(), key=lambda g: (sort_key(g.row), sort_key(g.col)))


def sort_key(values: tuple) -> tuple:
  """Numbers by value, then everything else by text."""
  parsed = [json.loads(v) for v in values]
  return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in parsed)


def check_fields(runs: Sequence[Run], fields: Sequence[str], flag: str) -> None:
  known = {k for run in runs for k in run.config}
  for field in fields:
    if field not in known:
      varying = ", ".join(varying_fields(runs)) or "none"
      raise ReportError(f"--{flag}: no config field {field!r}; fields that vary: {varying}")


def check_metric(runs: Sequence[Run], metric: str) -> None:
  kind, slash, name = metric.partition("/")
  available = sorted(
    {f"{k}/{n}" for r in runs for k, row in r.final.items() for n in row}
    - {f"{k}/{n}" for r in runs for k in r.final for n in ("step", "kind")}
  )
  if not slash or metric not in available:
    raise ReportError(f"unknown --metric {metric!r}; available: {', '.join(available)}")


def format_value(value: float, metric: str) -> str:
  if not math.isfinite(value):
    return "n/a"
  return f"{100 * value:.2f}" if "accuracy" in metric else f"{value:.4g}"


def format_gain(gain: float) -> str:
  """``+0.12 (met)``: the convergence criterion of the reproduction protocol."""
  if not math.isfinite(gain):
    return "n/a"
  verdict = "met" if gain < CONVERGED_GAIN else "not met"
  return f"{100 * gain:+.2f} ({verdict})"


def format_cell(group: Group | None, metric: str) -> str:
  """``85.12 (84.90-85.40, n=3)``, with failures counted."""
  if group is None:
    return ""
  failed = f", {group.failed} failed" if group.failed else ""
  if not group.values:
    return f"failed ({group.failed} of {len(group.runs)})"
  if len(group.values) == 1:
    return f"{format_value(group.median, metric)} (n=1{failed})"
  spread = f"{format_value(group.low, metric)}-{format_value(group.high, metric)}"
  return f"{format_value(group.median, metric)} ({spread}, n={len(group.values)}{failed})"


def markdown(
  runs: Sequence[Run],
  groups: Sequence[Group],
  metric: str,
  rows: Sequence[str],
  cols: Sequence[str],
  root: str,
  failures: Sequence[tuple[str, str]] = (),
) -> str:
  """report.md: the rows x columns table, then every run's value and wall time."""
  unit = " (%)" if "accuracy" in metric else ""
  row_keys = list(dict.fromkeys(g.row for g in groups))
  col_keys = list(dict.fromkeys(g.col for g in groups))
  cell = {(g.row, g.col): g for g in groups}
  lines = [
    f"# Report: {root}",
    "",
    f"Metric: `{metric}`{unit}, median over seeds (min-max, n = runs with a value).",
    "",
    "| " + " | ".join([", ".join(rows) or "runs", *(label(c, cols) for c in col_keys)]) + " |",
    "|" + "---|" * (1 + len(col_keys)),
  ]
  for r in row_keys:
    cells = [format_cell(cell.get((r, c)), metric) for c in col_keys]
    lines.append("| " + " | ".join([label(r, rows), *cells]) + " |")
  lines += ["", "## Runs", ""]
  with_val = any(run.val_curve for run in runs)
  gain_header = " validation gain over the last fifth (points) |" if with_val else ""
  lines.append(f"| run | {metric} | steps | wall time (s) | status |{gain_header}")
  lines.append("|---|---|---|---|---|" + ("---|" if with_val else ""))
  for run in runs:
    wall = run.status.get("wall_s", "")
    state = run.status.get("status") or ("done" if run.complete else "incomplete")
    value = format_value(run.value(metric), metric)
    gain = f" {format_gain(run.last_fifth_gain())} |" if with_val else ""
    lines.append(f"| {run.name} | {value} | {run.last_step} | {wall} | {state} |{gain}")
  if failures:
    lines += ["", "## Failed before training", ""]
    lines += [f"- {name}: {error}" for name, error in failures]
  return "\n".join(lines) + "\n"


def write_csv(
  path: pathlib.Path, groups: Sequence[Group], rows: Sequence[str], cols: Sequence[str]
) -> None:
  """report.csv: one line per group with n, failures, median, min, max and run names."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*rows, *cols, "n", "failed", "median", "min", "max", "runs"])
    for g in groups:
      fields = [json.loads(v) for v in (*g.row, *g.col)]
      writer.writerow([*fields, len(g.values), g.failed, g.median, g.low, g.high, " ".join(g.runs)])


def write_report(
  root: str | pathlib.Path,
  metric: str = "eval/accuracy",
  rows: Sequence[str] = (),
  cols: Sequence[str] = (),
  out: str | pathlib.Path | None = None,
  plot: bool = True,
  force: bool = True,
) -> list[Group]:
  """Collects, aggregates and writes report.md, report.csv, report.png and report.json.

  Args:
    root: directory searched for runs.
    metric: ``KIND/NAME`` of the value per run (its last row of that kind).
    rows: row fields; empty: ``default_rows``.
    cols: column fields.
    out: output directory (default ``root``).
    plot: also draw report.png.
    force: replace a report in ``out`` written with other arguments (other root, metric,
      rows or columns); otherwise that is a ReportError and nothing is written.

  Returns:
    The groups (one per table cell).

  Raises:
    ReportError: no runs, unknown field or metric, or another report in ``out``.
  """
  runs = collect_runs(root)
  check_metric(runs, metric)
  check_fields(runs, [*rows, *cols], "rows/--cols")
  rows = list(rows) or default_rows(runs, cols)
  groups = aggregate(runs, metric, rows, cols)
  out = pathlib.Path(out or root)
  args = {"root": str(root), "metric": metric, "rows": list(rows), "cols": list(cols)}
  if not force:
    check_replaces_same_report(out, args)
  out.mkdir(parents=True, exist_ok=True)
  text = markdown(runs, groups, metric, rows, cols, str(root), failed_without_metrics(root))
  (out / "report.md").write_text(text)
  write_csv(out / "report.csv", groups, rows, cols)
  if plot:
    plot_groups(out / "report.png", groups, metric, rows, cols)
  (out / ARGS_FILE).write_text(json.dumps(args, indent=2) + "\n")
  return groups


def check_replaces_same_report(out: pathlib.Path, args: dict[str, Any]) -> None:
  """ReportError when ``out`` holds a report written with other arguments than ``args``."""
  path = out / ARGS_FILE
  if not path.is_file():
    if (out / "report.md").exists():
      raise ReportError(
        f"{out / 'report.md'} exists without {ARGS_FILE}; pass --force to replace it"
      )
    return
  held = read_json(path)
  if held != args:
    shown = ", ".join(f"{k}={held.get(k)!r}" for k in args if held.get(k) != args[k])
    raise ReportError(f"{out} holds a report with {shown}; pass --force to replace it")


def check_report(directory: str | pathlib.Path) -> int:
  """Recomputes the report in ``directory`` from its runs; the number of files compared.

  Raises:
    ReportError: no ``report.json``.
    ReportMismatch: a recomputed file differs (names the first differing line).
  """
  directory = pathlib.Path(directory)
  args_path = directory / ARGS_FILE
  if not args_path.is_file():
    raise ReportError(f"{args_path} not found: --check needs a report written by this tool")
  args = read_json(args_path)
  with tempfile.TemporaryDirectory() as scratch:
    write_report(args["root"], args["metric"], args["rows"], args["cols"], scratch, plot=False)
    for name in CHECKED_FILES:
      committed = (directory / name).read_text().splitlines() if (directory / name).exists() else []
      fresh = (pathlib.Path(scratch) / name).read_text().splitlines()
      for number, (old, new) in enumerate(itertools.zip_longest(committed, fresh), start=1):
        if old != new:
          raise ReportMismatch(
            f"{directory / name} line {number} differs from its runs: {old!r} != {new!r}"
          )
  return len(CHECKED_FILES)


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    return fail(
      "give exactly one ROOT directory: python -m experiments.studies.report ROOT [--metric=...]"
    )
  if CHECK.value:
    try:
      checked = check_report(argv[1])
    except ReportMismatch as error:
      return fail(str(error), REPORT_DIFFERS)
    except ReportError as error:
      return fail(str(error))
    print(f"report: {argv[1]} matches its runs ({checked} files)")
    return 0
  try:
    groups = write_report(
      argv[1], METRIC.value, ROWS.value, COLS.value, OUT.value, force=FORCE.value
    )
  except ReportError as error:
    return fail(str(error))
  print(f"report: {len(groups)} groups -> {pathlib.Path(OUT.value or argv[1]) / 'report.md'}")
  return 0


def run() -> None:
  """Parses flags (one-line errors for bad ones) and runs ``main``."""
  cli.run(main)


if __name__ == "__main__":
  run()
