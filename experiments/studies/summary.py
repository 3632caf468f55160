r"""One results table from every committed study, kept in the docs by markers.

Every folder under ``results/`` with a ``report.csv`` (written by
``python -m experiments.studies.report``) is a study. Its ``report.md`` names
the runs directory and the metric; the runs' own ``metrics.jsonl`` give one value
per run, aggregated over seeds as mean ± sample standard deviation. The
report's groups must match the runs (a stale report is an error), so a table
written here cannot disagree with the committed result files.

Usage::

  python -m experiments.studies.summary                       # print the summary table
  python -m experiments.studies.summary --write README.md docs/training.md
  python -m experiments.studies.summary --check README.md docs/training.md

``--write`` replaces the text between ``<!-- results:begin -->`` and
``<!-- results:end -->`` in each file with the summary table, and between
``<!-- results:begin STUDY -->`` and ``<!-- results:end -->`` with the per-run
table of one study (e.g. ``quickstart``). ``--check`` changes nothing and exits
with status 1 and one ``error:`` line when a block differs from what the results
give. Bad input (a missing file, no block, an unknown study) is one ``error:``
line and exit status 2.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import statistics
import sys
from collections.abc import Mapping, Sequence

from experiments import cli
from experiments.studies import report

RESULTS_DIR = "results"
REPORT_CSV = "report.csv"
REPORT_MD = "report.md"
CHECK_FAILED = 1
BEGIN = re.compile(r"<!-- results:begin(?: (?P<name>[^ >]+))? -->\n")
END = "<!-- results:end -->"
ROOT_LINE = re.compile(r"^# Report: (?P<root>.+)$", re.MULTILINE)
METRIC_LINE = re.compile(r"^Metric: `(?P<metric>[^`]+)`", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class About:
  """What a study stands for: the part of the paper and what it compares."""

  paper: str
  compares: str


STUDIES: Mapping[str, About] = {
  "quickstart": About(
    "Section 5 recipe", "`quickstart.py`: NF-ResNet-18 vs BN-ResNet-V2-18, digits, 15 epochs"
  ),
  # The reproduction protocol's studies (docs/reproducing.md): tuned rates, 3 seeds.
  "table1": About(
    "Table 1",
    "NF vs BN vs SkipInit vs Fixup ResNets, depths 18 and 26, NF and BN also regularized, "
    "tuned, 10 epochs",
  ),
  "table2": About(
    "Table 2", "NF vs BN ResNet-18, batch 1024 down to 4, Table 1's tuned rates, 10 epochs each"
  ),
  "meanshift": About(
    "Section 4.1",
    "ResNet-50: Scaled WS (with and without gammas) vs He init without WS vs BN, tuned, 10 epochs",
  ),
  "activation": About(
    "Section 4, gamma constants",
    "NF-ResNet-18 with ReLU, SiLU and GELU, and ReLU without its gamma, tuned, 10 epochs",
  ),
  "large_batch": About(
    "NFNets paper, Section 4",
    "NF-ResNet-18 with and without AGC vs BN-ResNet-18, batch 256 to 8192, tuned, 10 epochs",
  ),
  "regnet": About("Table 3", "NF-RegNet-B0 vs BN-RegNet-B0, CIFAR-10 subset, tuned, 30 epochs"),
  # The earlier short screens: 0.1 epoch, the quick start's learning rate, no tuning.
  "short/table1": About("Table 1", "NF vs BN vs SkipInit ResNets, depths 18 and 26, 0.1 epoch"),
  "short/table2": About("Table 2", "NF vs BN ResNet-18, batch 256 down to 4, 0.1 epoch each"),
  "short/meanshift": About(
    "Section 4.1", "ResNet-50: Scaled WS vs He init without WS vs BN, 0.1 epoch"
  ),
  "short/activation": About(
    "Section 4, gamma constants", "NF-ResNet-18 with ReLU, GELU and SiLU, 0.1 epoch"
  ),
  "paper_lr": About(
    "Table 1", "study `short/table1` at the paper's learning rate `0.1 * batch / 256`, 0.1 epoch"
  ),
  "longer": About("Table 1", "NF vs BN ResNet-18, 1 epoch"),
  "longer/meanshift": About("Section 4.1", "study `short/meanshift` at 0.5 epoch"),
  "longer/meanshift_skipgain1_unit_stem": About(
    "Section 4.1, Figure 2", "ResNet-50 with skip gains 1: He init without WS vs Scaled WS"
  ),
  "longer/meanshift_skipgain1": About(
    "Section 4.1, Figure 2",
    "as the row above, runs recorded with a gain-2 He stem conv (not the `nf_he` stem)",
  ),
}
"""Known studies, in table order; other studies follow, sorted, described by their fields."""

MODEL_NAMES = {
  "nf_resnet": "NF",
  "nf_he": "NF (He init, no WS)",
  "resnet_v2": "BN",
  "skipinit": "SkipInit",
  "fixup": "Fixup",
  "nf_regnet": "NF-RegNet",
  "bn_regnet": "BN-RegNet",
}
WS_FIELD = "model.weight_standardization"
WS_NAMES = {False: "NF (He init, no WS)", None: "NF (Scaled WS)", True: "NF (Scaled WS)"}
VALUE_NAMES = {"relu": "ReLU", "silu": "SiLU", "gelu": "GELU"}
FIELD_NAMES = {"train.batch_size": "batch", "model.depth": "depth", "model.activation": ""}


class SummaryError(ValueError):
  """A study whose report cannot be read or does not match its runs."""


@dataclasses.dataclass(frozen=True)
class Study:
  """One study: its report's grouping fields and metric, its runs and groups."""

  name: str  # The folder under results/, e.g. "longer/meanshift".
  directory: pathlib.Path
  runs_dir: pathlib.Path  # The ROOT its report.md names.
  metric: str
  fields: list[str]
  runs: list[report.Run]
  groups: list[report.Group]

  @property
  def about(self) -> About:
    return STUDIES.get(self.name) or About("", "by " + ", ".join(f"`{f}`" for f in self.fields))

  @property
  def seeds(self) -> int:
    return len({json.dumps(run.config.get(report.SEED_FIELD)) for run in self.runs})

  def label(self, group: report.Group) -> str:
    return " ".join(filter(None, group_label(self.fields, group.row))) or "all runs"


def group_label(fields: Sequence[str], values: Sequence[str]) -> tuple[str, str]:
  """``("NF", "depth 18")``: the model in words, then the other fields (defaults left out)."""
  config = {field: json.loads(encoded) for field, encoded in zip(fields, values, strict=True)}
  model = MODEL_NAMES.get(config.get("model_name"), config.get("model_name") or "")
  if WS_FIELD in config and config.get("model_name") == "nf_resnet":
    model = WS_NAMES[config[WS_FIELD]]
  setting = ["no WS"] if config.get(WS_FIELD) is False and "model_name" not in config else []
  for field, value in config.items():
    if field in ("model_name", WS_FIELD) or value is None:
      continue
    name = FIELD_NAMES.get(field, field.split(".")[-1])
    shown = VALUE_NAMES.get(value, value) if isinstance(value, str) else value
    setting.append(f"{name} {shown}".strip())
  return model, ", ".join(setting)


def read_csv_groups(path: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
  """The grouping fields (the columns before ``n``) and the rows of a report.csv."""
  with path.open(newline="") as f:
    rows = list(csv.reader(f))
  if not rows or "n" not in rows[0]:
    raise SummaryError(f"{path}: not a report.csv (no header with an 'n' column)")
  header = rows[0]
  return header[: header.index("n")], [dict(zip(header, row, strict=True)) for row in rows[1:]]


def same_number(a: float, b: float) -> bool:
  return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_report(study: Study, rows: Sequence[Mapping[str, str]], path: pathlib.Path) -> None:
  """The report.csv groups must be the groups of the runs (same runs, count and median)."""
  by_runs = {" ".join(g.runs): g for g in study.groups}
  stale = f"{path} does not match the runs it reports; rerun python -m experiments.studies.report"
  if len(rows) != len(study.groups):
    raise SummaryError(f"{stale} ({len(rows)} groups in the file, {len(study.groups)} from runs)")
  for row in rows:
    group = by_runs.get(row["runs"])
    if group is None:
      raise SummaryError(f"{stale} (no group of runs {row['runs']!r})")
    if int(row["n"]) != len(group.values) or not same_number(float(row["median"]), group.median):
      raise SummaryError(f"{stale} (group {row['runs']!r} changed)")


def read_study(directory: pathlib.Path, results_dir: pathlib.Path) -> Study:
  """Reads ``directory/report.{csv,md}`` and the runs the report names, and checks they agree."""
  name = directory.relative_to(results_dir).as_posix()
  md_path = directory / REPORT_MD
  try:
    text = md_path.read_text()
  except OSError as error:
    raise SummaryError(f"{md_path}: cannot read ({error.strerror})") from None
  root, metric = ROOT_LINE.search(text), METRIC_LINE.search(text)
  if not root or not metric:
    raise SummaryError(f"{md_path}: no '# Report: ROOT' or 'Metric:' line")
  csv_path = directory / REPORT_CSV
  try:
    fields, rows = read_csv_groups(csv_path)
  except (OSError, ValueError) as error:
    raise SummaryError(f"{csv_path}: unreadable ({error})") from None
  runs_dir = results_dir.parent / root["root"]
  try:
    runs = report.collect_runs(runs_dir)
  except report.ReportError as error:
    raise SummaryError(f"study {name}: {error}") from None
  groups = report.aggregate(runs, metric["metric"], fields, [])
  study = Study(name, directory, runs_dir, metric["metric"], fields, runs, groups)
  try:
    check_report(study, rows, csv_path)
  except SummaryError:
    raise
  except (KeyError, ValueError) as error:
    raise SummaryError(f"{csv_path}: unreadable ({error!r})") from None
  return study


def find_studies(results_dir: str | pathlib.Path = RESULTS_DIR) -> list[Study]:
  """Every study under ``results_dir`` (folders with a report.csv): known ones first."""
  results_dir = pathlib.Path(results_dir)
  if not results_dir.is_dir():
    raise SummaryError(f"{results_dir} is not a directory")
  directories = [p.parent for p in results_dir.rglob(REPORT_CSV)]
  if not directories:
    raise SummaryError(f"no studies under {results_dir}: no {REPORT_CSV} found")
  order = list(STUDIES)

  def rank(directory: pathlib.Path) -> tuple[int, str]:
    name = directory.relative_to(results_dir).as_posix()
    return (order.index(name), "") if name in STUDIES else (len(order), name)

  return [read_study(d, results_dir) for d in sorted(directories, key=rank)]


def mean_std(values: Sequence[float], metric: str, digits: int) -> str:
  """``52.9 ± 3.7`` (sample standard deviation; the mean alone for one value)."""
  scale = 100 if "accuracy" in metric else 1
  mean = f"{scale * statistics.fmean(values):.{digits}f}"
  if len(values) < 2:
    return mean
  return f"{mean} ± {scale * statistics.stdev(values):.{digits}f}"


def format_group(study: Study, group: report.Group) -> str:
  """``NF 52.9 ± 3.7``, ``NF failed (1 of 1)`` or ``NF 52.9 (1 failed)``."""
  model = group_label(study.fields, group.row)[0]
  if not group.values:
    value = f"failed ({group.failed} of {len(group.runs)})"
  else:
    failed = f" ({group.failed} failed)" if group.failed else ""
    value = mean_std(group.values, study.metric, 1) + failed
  return f"{model} {value}".strip()


def format_groups(study: Study) -> str:
  """``depth 18: NF 53.6 ± 3.7, BN 81.0 ± 0.6; depth 26: ...``: models side by side per setting."""
  settings: dict[str, list[str]] = {}
  for group in study.groups:
    settings.setdefault(group_label(study.fields, group.row)[1], []).append(
      format_group(study, group)
    )
  return "; ".join(
    f"{setting}: {', '.join(cells)}" if setting else ", ".join(cells)
    for setting, cells in settings.items()
  )


def link(path: pathlib.Path, target: pathlib.Path) -> str:
  """``path`` relative to the folder of the file ``target`` (no symlinks resolved)."""
  return os.path.relpath(os.path.abspath(path), os.path.abspath(target.parent))


def metric_name(metric: str) -> str:
  return "test accuracy (%)" if metric == "eval/accuracy" else f"`{metric}`"


def summary_table(studies: Sequence[Study], target: pathlib.Path) -> str:
  """The markdown table of all studies, links relative to the file ``target``."""
  metrics = sorted({metric_name(s.metric) for s in studies})
  lines = [
    f"| study | paper | what it compares | {' / '.join(metrics)}: mean ± std over seeds | runs |",
    "| --- | --- | --- | --- | --- |",
  ]
  for study in studies:
    failed = sum(g.failed for g in study.groups)
    runs = f"{len(study.runs)} ({study.seeds} seed{'s' if study.seeds > 1 else ''}"
    runs += f", {failed} failed)" if failed else ")"
    cells = [
      f"[{study.name}]({link(study.directory / REPORT_MD, target)})",
      study.about.paper,
      study.about.compares,
      format_groups(study),
      runs,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def train_images_per_s(run_dir: pathlib.Path) -> float:
  """Median ``images_per_s`` of a run's logged training rows (NaN without any)."""
  values = []
  for line in (run_dir / report.METRICS_FILE).read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if row.get("kind", "train") == "train" and isinstance(row.get("images_per_s"), (int, float)):
      values.append(row["images_per_s"])
  return statistics.median(values) if values else math.nan


def runs_table(study: Study, target: pathlib.Path) -> str:
  """One study's runs: model, value, steps, median training images/s (and wall time if known)."""
  label = {name: study.label(g) for g in study.groups for name in g.runs}
  walls = any("wall_s" in run.status for run in study.runs)
  header = ["run", "model", metric_name(study.metric), "steps", "training images/s (median)"]
  lines = ["| " + " | ".join(header + (["wall time (s)"] if walls else [])) + " |"]
  lines.append("|" + " --- |" * (len(header) + walls))
  for run in study.runs:
    value = run.value(study.metric)
    cells = [
      run.name,
      label[run.name],
      report.format_value(value, study.metric) if math.isfinite(value) else "failed",
      str(run.last_step),
      f"{train_images_per_s(study.runs_dir / run.name):.0f}",
    ] + ([str(run.status.get("wall_s", ""))] if walls else [])
    lines.append("| " + " | ".join(cells) + " |")
  source = link(study.directory / REPORT_MD, target)
  return "\n".join(lines) + f"\n\nFrom [`{study.name}/{REPORT_MD}`]({source}) and its runs.\n"


def render(name: str | None, studies: Sequence[Study], target: pathlib.Path) -> str:
  """The text of the block ``name`` (None: the summary table) for the file ``target``."""
  if name is None:
    return summary_table(studies, target)
  by_name = {s.name: s for s in studies}
  if name not in by_name:
    raise SummaryError(f"{target}: unknown results block {name!r}; studies: {', '.join(by_name)}")
  return runs_table(by_name[name], target)


def update_text(text: str, studies: Sequence[Study], target: pathlib.Path) -> str:
  """``text`` with every results block replaced by what the studies give."""
  out, position, found = [], 0, 0
  for match in BEGIN.finditer(text):
    end = text.find(END, match.end())
    if end < 0:
      raise SummaryError(f"{target}: {match.group(0).strip()} without {END}")
    if BEGIN.search(text, match.end(), end):
      raise SummaryError(f"{target}: results:begin inside another results block")
    out += [text[position : match.end()], render(match["name"], studies, target)]
    position, found = end, found + 1
  if not found:
    raise SummaryError(f"{target}: no <!-- results:begin --> ... {END} block")
  return "".join(out) + text[position:]


def build_parser() -> cli.UsageParser:
  parser = cli.UsageParser(
    prog="python -m experiments.studies.summary", description=__doc__.splitlines()[0]
  )
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--write", nargs="+", metavar="FILE", help="replace the results blocks")
  mode.add_argument("--check", nargs="+", metavar="FILE", help="exit 1 if a block is stale")
  parser.add_argument(
    "--results", default=RESULTS_DIR, help="the results folder (default: %(default)s)"
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  results_dir = pathlib.Path(args.results)
  try:
    studies = find_studies(results_dir)
    if not (args.write or args.check):
      sys.stdout.write(summary_table(studies, pathlib.Path("README.md")))
      return 0
    updates = {}  # Every file is read and rendered before any is written.
    for path in map(pathlib.Path, args.write or args.check):
      try:
        text = path.read_text()
      except OSError as error:
        return cli.fail(f"{path}: cannot read ({error.strerror})")
      updates[path] = (text, update_text(text, studies, path))
  except SummaryError as error:
    return cli.fail(str(error))
  for path, (text, new) in updates.items():
    if args.check and new != text:
      return cli.fail(
        f"{path}: results block differs from {results_dir}/; "
        f"run python -m experiments.studies.summary --write {path}",
        CHECK_FAILED,
      )
    if args.write and new != text:
      path.write_text(new)
      print(f"summary: updated {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
