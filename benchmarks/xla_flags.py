"""XLA:CPU flag exploration (CPU-throughput goal): which flags exist, what each does to a step.

Usage::

  python -m benchmarks.xla_flags [--check_only] [--only=NAME,...] [--repeats=1] \
    [-- THROUGHPUT FLAGS...]

An unknown flag in ``XLA_FLAGS`` aborts the process, and ``XLA_FLAGS`` is read
once when JAX starts, so every candidate is first checked in a throw-away
process (``flag_accepted``) and then measured in a fresh process running
``benchmarks.throughput`` with it. Candidates are interleaved with baseline
runs (baseline, A, baseline, B, ...; ``--repeats`` pairs per candidate) so that
load drift on a shared machine shows up in the baselines. The throughput flags
after ``--`` are checked (``benchmarks.throughput``'s parser) before anything
runs. Results go to stdout; ``benchmarks/NOTES.md``
records the conclusions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from experiments import cli

CANDIDATES: dict[str, str] = {
  "baseline": "",
  "two_devices": "--xla_force_host_platform_device_count=2",
  "multi_thread_eigen_off": "--xla_cpu_multi_thread_eigen=false",
  "fast_math": "--xla_cpu_enable_fast_math=true",
  "onednn": "--xla_cpu_use_onednn=true",
  "onednn_fusions": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "xnn_fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
  "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
  "ynn_fusions": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
  "no_thunk_runtime": "--xla_cpu_use_thunk_runtime=false",
  "vector_width_512": "--xla_cpu_prefer_vector_width=512",
  "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
  "opt_fast_runtime": "--xla_cpu_opt_preset=FAST_RUNTIME",
  "opt_fast_compile": "--xla_cpu_opt_preset=FAST_COMPILE",
}
PROBE = "import jax, jax.numpy as jnp; jnp.ones((8, 8)).dot(jnp.ones((8, 8))).block_until_ready()"
DEFAULT_CASE = [
  "--model=nf_resnet",
  "--depth=50",
  "--resolution=32",
  "--batch_size=128",
  "--steps=3",
  "--warmup=1",
]


def _env(flags: str) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flags]))
  return env


def flag_accepted(flags: str) -> tuple[bool, str]:
  """Whether JAX starts and runs a tiny op with ``flags``; the last stderr line otherwise."""
  proc = subprocess.run(
    [sys.executable, "-c", PROBE], env=_env(flags), capture_output=True, text=True, timeout=120
  )
  lines = proc.stderr.strip().splitlines()
  return proc.returncode == 0, (lines[-1] if lines else "")


def run_throughput(flags: str, case_args: list[str]) -> dict:
  """``benchmarks.throughput --json`` in a fresh process with ``flags`` added to XLA_FLAGS."""
  cmd = [sys.executable, "-m", "benchmarks.throughput", "--json", *case_args]
  proc = subprocess.run(cmd, env=_env(flags), capture_output=True, text=True)
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def candidate_names(text: str) -> list[str]:
  """``--only``: comma-separated names of ``CANDIDATES``, as an argparse ``type``."""
  names = text.split(",")
  for name in names:
    if name not in CANDIDATES:
      raise argparse.ArgumentTypeError(
        f"unknown candidate {name!r}; allowed: {', '.join(CANDIDATES)}"
      )
  return names


def main(argv: list[str] | None = None) -> int:
  parser = cli.UsageParser(prog="python -m benchmarks.xla_flags", description=__doc__)
  parser.add_argument("--check_only", action="store_true")
  parser.add_argument("--only", type=candidate_names, default=None, help="candidate names, a,b")
  parser.add_argument(
    "--repeats", type=cli.positive_int, default=1, help="baseline/candidate pairs per candidate"
  )
  parser.add_argument("case", nargs="*", help="benchmarks.throughput flags (after --)")
  args = parser.parse_args(argv)
  names = args.only or list(CANDIDATES)
  case = args.case or DEFAULT_CASE
  if args.case:
    from benchmarks import throughput  # noqa: PLC0415 (imports jax: only to check given flags)

    throughput.parse_args(args.case, context="throughput flags after --: ")
  for name in names:
    flags = CANDIDATES[name]
    ok, why = flag_accepted(flags)
    if not ok:
      print(f"{name}: REJECTED ({flags}): {why}", flush=True)
      continue
    if args.check_only:
      print(f"{name}: accepted ({flags})", flush=True)
      continue
    for _ in range(args.repeats):
      runs = [("baseline", run_throughput("", case)), (name, run_throughput(flags, case))]
      for label, r in runs:
        if "error" in r:
          print(f"{label}: ERROR {r['error']}", flush=True)
          continue
        print(
          f"{label} [{flags if label != 'baseline' else ''}]: "
          f"step {r['median_step_s'] * 1e3:.0f} ms,"
          f" {r['images_per_s']:.1f} img/s, compile {r['compile_s']:.1f} s,"
          f" load {r['machine']['load_average']:.1f}",
          flush=True,
        )
  return 0


if __name__ == "__main__":
  sys.exit(main())
