"""The standard benchmark table: NF-ResNet vs BN-ResNetV2, compile time vs depth, the goals.

Usage::

  python -m benchmarks.suite [--machine=NAME] [--only=REGEX] [--full] [--out_dir=...]

Runs every case of ``CASES`` in its own process (``python -m
benchmarks.throughput --json``, so peak memory is per case and XLA flags come
from the environment), then writes ``<out_dir>/<machine>.json`` (every
measurement) and ``<out_dir>/<machine>.md`` (the tables and the goal summary).
``--full`` adds ``FULL_ONLY``: compiling the unrolled depth-600 step, which alone
takes 3-4 minutes on 2 CPU cores (the suite without it: about 13 minutes).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any

from benchmarks import report
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


def write(
  out_dir: pathlib.Path,
  machine: str,
  peak_flops: float,
  wall_s: float,
  results: dict,
  full: bool = False,
) -> None:
  """Writes ``<machine>.json`` and ``<machine>.md`` (after every case, so partial runs count)."""
  payload = {
    "machine": machine,
    "matmul_peak_flops_per_s": peak_flops,
    "suite_wall_s": wall_s,
    "full": full,
    "results": results,
  }
  (out_dir / f"{machine}.json").write_text(json.dumps(payload, indent=1) + "\n")
  (out_dir / f"{machine}.md").write_text(report.markdown(payload))


def main(argv: list[str] | None = None) -> int:
  parser = cli.UsageParser(prog="python -m benchmarks.suite", description=__doc__)
  parser.add_argument("--machine", default=None, help="results file name (default: derived)")
  parser.add_argument("--only", default=None, help="regex over case names")
  parser.add_argument("--full", action="store_true", help=f"also run {', '.join(FULL_ONLY)}")
  parser.add_argument("--out_dir", default=str(OUT_DIR))
  args = parser.parse_args(argv)
  machine = args.machine or default_machine()
  start = time.perf_counter()
  peak_flops = measure_peak()
  results: dict[str, Any] = {}
  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, case, timing in CASES:
    if args.only and not re.search(args.only, name):
      continue
    if name in FULL_ONLY and not args.full:
      continue
    results[name] = run_case(case, timing, peak_flops)
    print(f"{name}: {report.summary_line(results[name])}", flush=True)
    write(out_dir, machine, peak_flops, time.perf_counter() - start, results, args.full)
  print(f"wrote {out_dir / machine}.md and .json in {time.perf_counter() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
