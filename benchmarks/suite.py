"""The standard benchmark table: NF-ResNet vs BN-ResNetV2, compile time vs depth, the goals.

Usage::

  python -m benchmarks.suite [--machine=NAME] [--only=REGEX] [--full] [--out_dir=...] [--force]

Runs every case of ``CASES`` in its own process (``python -m
benchmarks.throughput --json``, so peak memory is per case and XLA flags come
from the environment), then writes ``<out_dir>/<machine>.json`` (every
measurement) and ``<out_dir>/<machine>.md`` (the tables and the goal summary).
``--full`` adds ``FULL_ONLY``: compiling the unrolled depth-600 step, which alone
takes 3-4 minutes on 2 CPU cores (the suite without it: about 13 minutes).

A partial run (``--only``) writes ``<machine>-only-<slug>.json`` and ``.md``
(``<slug>``: the regex with every run of other characters than letters and
digits replaced by ``-``), never the full table. Both files record the command
line. An existing results file written for another selection of cases (other
``--only`` or ``--full``), or not by this suite, is only overwritten with
``--force``; the check happens before anything runs. While a run is under way,
the files after each case are ``<name>.incomplete.json`` and ``.md``; they
replace ``<name>.json`` and ``.md`` when the last case is done, so an
interrupted run leaves the previous results as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from benchmarks import report, results_guard
from benchmarks.throughput import cpu_model
from benchmarks.workload import Case
from experiments import cli

OUT_DIR = pathlib.Path(__file__).parent / "results"
D18 = dict(depth=18, resolution=32, batch_size=128, stem="cifar", num_classes=10)
D50 = dict(depth=50, resolution=224, batch_size=16)
TIMED = dict(steps=3, warmup=1)
MANY = dict(steps=15, warmup=2)  # Eval steps of about a second: ratios near 1 need more.
GOAL = dict(steps=5, warmup=1)  # Train steps whose ratios are goals (WS cost of a few %).
FEW = dict(steps=2, warmup=1)  # Steps of several seconds each.
SMALL = dict(depth=50, resolution=32, batch_size=16)  # Stacked vs unrolled runtime.
COMPILE_ONLY = dict(steps=0, warmup=0)

# (name, case, timing). Names are the keys the report and the goal summary use.
CASES: list[tuple[str, Case, dict[str, int]]] = [
  ("nf18_train", Case("nf_resnet", **D18), FEW),
  ("bn18_train", Case("resnet_v2", **D18), FEW),
  ("nf18_eval", Case("nf_resnet", mode="eval", **D18), MANY),
  ("bn18_eval", Case("resnet_v2", mode="eval", **D18), MANY),
  ("nf50_train", Case("nf_resnet", **D50), GOAL),
  ("bn50_train", Case("resnet_v2", **D50), GOAL),
  ("nf50_eval", Case("nf_resnet", mode="eval", **D50), MANY),
  ("bn50_eval", Case("resnet_v2", mode="eval", **D50), MANY),
  ("nf50_train_no_ws", Case("nf_resnet", weight_standardization=False, **D50), GOAL),
  ("nf50_train_stacked", Case("nf_resnet", stack_blocks=True, **D50), FEW),
  ("nf50_small_train", Case("nf_resnet", **SMALL), TIMED),
  ("nf50_small_train_stacked", Case("nf_resnet", stack_blocks=True, **SMALL), TIMED),
  ("nf50_eval_frozen", Case("nf_resnet", mode="eval", frozen=True, **D50), MANY),
  ("bn50_eval_folded", Case("resnet_v2", mode="eval", frozen=True, **D50), MANY),
  ("nf50_32px_train", Case("nf_resnet", depth=50, resolution=32, batch_size=128), TIMED),
  (
    "nf50_32px_train_xla",
    Case("nf_resnet", depth=50, resolution=32, batch_size=128, conv_impl="xla"),
    TIMED,
  ),
  ("nf50_train_xla", Case("nf_resnet", conv_impl="xla", **D50), FEW),
  ("bn50_32px_train", Case("resnet_v2", depth=50, resolution=32, batch_size=128), TIMED),
  ("nf50_train_bf16", Case("nf_resnet", compute_dtype="bfloat16", **D50), FEW),
  ("nf18_train_bf16", Case("nf_resnet", compute_dtype="bfloat16", **D18), FEW),
]
for _depth in (50, 288, 600):
  for _stacked in (False, True):
    _name = f"compile_nf{_depth}_{'stacked' if _stacked else 'unrolled'}"
    _case = Case("nf_resnet", depth=_depth, resolution=224, batch_size=16, stack_blocks=_stacked)
    CASES.append((_name, _case, COMPILE_ONLY))
FULL_ONLY = ("compile_nf600_unrolled",)


def default_machine() -> str:
  """A file-name-safe machine label: platform, CPU model, core count."""
  platform = os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] or "cpu"
  slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
  return f"{platform}-{slug}-{os.cpu_count()}c"


def case_args(case: Case, timing: dict[str, int]) -> list[str]:
  """Command-line flags of ``benchmarks.throughput`` for ``case``."""
  args = [f"--{k}={v}" for k, v in vars(case).items()]
  return args + [f"--{k}={v}" for k, v in timing.items()]


def run_case(case: Case, timing: dict[str, int], peak_flops: float) -> dict[str, Any]:
  """Runs one case in a fresh process; returns its JSON result (or the error)."""
  cmd = [sys.executable, "-m", "benchmarks.throughput", "--json", f"--peak_flops={peak_flops}"]
  proc = subprocess.run(cmd + case_args(case, timing), capture_output=True, text=True)
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_peak() -> float:
  cmd = [sys.executable, "-m", "benchmarks.peak", "--json"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])["flops_per_s"]


def write(stem: pathlib.Path, header: dict[str, Any], wall_s: float, results: dict) -> None:
  """Writes ``<stem>.json`` and ``<stem>.md``."""
  payload = {**header, "suite_wall_s": wall_s, "results": results}
  stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
  stem.with_name(stem.name + ".md").write_text(report.markdown(payload))


def finish(progress: pathlib.Path, stem: pathlib.Path) -> None:
  """Moves the finished run's ``<progress>.json``/``.md`` onto ``<stem>.json``/``.md``."""
  for suffix in (".json", ".md"):
    os.replace(progress.with_name(progress.name + suffix), stem.with_name(stem.name + suffix))


def regex(text: str) -> str:
  """``--only``: a Python regular expression, as an argparse ``type``."""
  try:
    re.compile(text)
  except re.error as error:
    raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({error})") from None
  return text


def file_label(text: str) -> str:
  """``--machine``: a file-name label, as an argparse ``type``."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
    raise argparse.ArgumentTypeError(
      f"{text!r} is not a file-name label (allowed: letters, digits, '.', '_' and '-',"
      " starting with a letter or digit)"
    )
  return text


def select(only: str | None, full: bool) -> list[tuple[str, Case, dict[str, int]]]:
  """The cases a run with ``--only`` and ``--full`` measures, in ``CASES`` order."""
  return [
    (name, case, timing)
    for name, case, timing in CASES
    if (only is None or re.search(only, name)) and (full or name not in FULL_ONLY)
  ]


def results_stem(machine: str, only: str | None) -> str:
  """The results file name without suffix: ``<machine>``, or ``<machine>-only-<slug>``."""
  if only is None:
    return machine
  slug = re.sub(r"[^A-Za-z0-9]+", "-", only).strip("-")[:60].strip("-")
  return f"{machine}-only-{slug}" if slug else f"{machine}-partial"


def command_line(argv: list[str]) -> str:
  return shlex.join(["python", "-m", "benchmarks.suite", *argv])


def recorded_command(payload: dict[str, Any]) -> str:
  """The command that wrote ``payload`` (files from before it was recorded: from ``full``)."""
  return payload.get("command") or command_line(["--full"] if payload.get("full") else [])


def overwrite_error(stem: pathlib.Path, only: str | None, full: bool) -> str | None:
  """Why ``<stem>.json``/``.md`` must not be overwritten by this run without ``--force``."""
  payload, why = results_guard.previous(stem, "benchmarks.suite", "results")
  if payload is not None and (payload.get("only"), bool(payload.get("full"))) != (only, full):
    why = f"{stem}.json holds the cases of `{recorded_command(payload)}`, not of this run"
  return why


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = cli.UsageParser(prog="python -m benchmarks.suite", description=__doc__)
  parser.add_argument(
    "--machine", type=file_label, default=None, help="results file name (default: derived)"
  )
  parser.add_argument(
    "--only", type=regex, default=None, help="regex over case names (writes <machine>-only-...)"
  )
  parser.add_argument("--full", action="store_true", help=f"also run {', '.join(FULL_ONLY)}")
  parser.add_argument("--out_dir", default=str(OUT_DIR))
  parser.add_argument(
    "--force", action="store_true", help="overwrite results written for other cases"
  )
  args = parser.parse_args(argv)
  cases = select(args.only, args.full)
  if not cases:
    needs_full = [n for n in FULL_ONLY if args.only and re.search(args.only, n)]
    hint = f" ({', '.join(needs_full)} runs with --full only)" if needs_full else ""
    names = ", ".join(name for name, _, _ in CASES)
    return cli.fail(f"--only={args.only!r} matches no case{hint}; cases: {names}")
  out_dir = pathlib.Path(args.out_dir)
  why = results_guard.out_dir_problem(args.out_dir)
  if why:
    return cli.fail(why)
  machine = args.machine or default_machine()
  stem = out_dir / results_stem(machine, args.only)
  why = None if args.force else overwrite_error(stem, args.only, args.full)
  if why:
    return cli.fail(f"{why}; pass --force to overwrite it")
  why = results_guard.make_out_dir(args.out_dir)
  if why:
    return cli.fail(why)
  start = time.perf_counter()
  peak_flops = measure_peak()
  header = {
    "machine": machine,
    "matmul_peak_flops_per_s": peak_flops,
    "command": command_line(argv),
    "only": args.only,
    "full": args.full,
  }
  results: dict[str, Any] = {}
  progress = stem.with_name(stem.name + ".incomplete")  # After every case: interrupted runs count.
  for name, case, timing in cases:
    results[name] = run_case(case, timing, peak_flops)
    print(f"{name}: {report.summary_line(results[name])}", flush=True)
    write(progress, header, time.perf_counter() - start, results)
  finish(progress, stem)
  print(f"wrote {stem}.md and .json in {time.perf_counter() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
