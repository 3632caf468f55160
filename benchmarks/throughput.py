"""Throughput of one configuration: step time, images/s, compile time, memory, FLOP/s.

Usage::

  python -m benchmarks.throughput --model=nf_resnet --depth=50 --resolution=224 \
    --batch_size=16 [--mode=train|eval] [--compute_dtype=float32|bfloat16] [--json]

The jitted step is the training system's (``experiments.steps``). Compile time
is the wall time of ``step.lower(state, batch).compile()`` (split into
``lower_s`` and ``xla_compile_s``); then ``--warmup`` steps run untimed and
``--steps`` steps are timed one by one (each waits for its result): the median
is the step time. FLOPs are ``nfresnet.count_macs`` multiply-accumulates x 2,
x 3 for a training step (forward + two backward products), and achieved FLOP/s
is compared with the measured ``jnp.dot`` peak (``benchmarks.peak``). Peak
memory is the process's maximum resident set on CPU, the device's peak bytes
in use elsewhere. ``--steps=0`` measures compilation only (nothing is
initialized). XLA flags come from the ``XLA_FLAGS`` environment variable, set
before the process starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

import nfresnet
from benchmarks import peak, workload
from benchmarks.conv_impl import CONV_IMPLS
from benchmarks.workload import Case
from experiments import cli

USAGE_ERROR = cli.USAGE_ERROR


def cpu_model() -> str:
  """The CPU model name from ``/proc/cpuinfo`` (or the platform's description)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
  """Where the numbers come from."""
  device = jax.devices()[0]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "load_average": os.getloadavg()[0],
  }


def peak_memory_mib() -> float:
  """Peak device bytes in use (accelerators) or peak host RSS (CPU), in MiB."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def measure(
  case: Case, *, steps: int = 5, warmup: int = 2, peak_flops: float | None = None
) -> dict[str, Any]:
  """Compiles and times ``case``; see the module docstring for the definitions.

  Args:
    case: the configuration.
    steps: timed steps (0: compile only).
    warmup: untimed steps run first.
    peak_flops: the machine's matmul FLOP/s; measured here when None and steps > 0.

  Returns:
    A JSON-serializable dict of the case, the machine and the measurements.
  """
  built = workload.build(case)
  start = time.perf_counter()
  lowered = built.step.lower(*built.abstract_args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  result: dict[str, Any] = {
    "case": dataclasses.asdict(case),
    "label": case.label(),
    "lower_s": lowered_at - start,
    "xla_compile_s": compiled_at - lowered_at,
    "compile_s": compiled_at - start,
  }
  if steps > 0:
    result.update(_time_steps(case, built, compiled, steps, warmup))
    flops = workload.step_flops(case)
    peak_flops = peak_flops or peak.matmul_peak(dtype="float32")
    result.update(
      step_flops=flops,
      achieved_flops_per_s=flops / result["median_step_s"],
      peak_flops_per_s=peak_flops,
      fraction_of_peak=flops / result["median_step_s"] / peak_flops,
    )
  result["peak_memory_mib"] = peak_memory_mib()
  result["machine"] = machine()
  return result


def stepper(case: Case, built, compiled) -> Callable[[], float]:
  """A function running one step of ``compiled`` (threading the train state) and timing it."""
  state, batch = built.make_args()

  def step() -> float:
    nonlocal state
    start = time.perf_counter()
    if case.mode == "train":
      state, out = compiled(state, batch)
    else:
      out = compiled(state, batch)
    jax.block_until_ready(out)
    return time.perf_counter() - start

  return step


def _time_steps(case: Case, built, compiled, steps: int, warmup: int) -> dict[str, Any]:
  step = stepper(case, built, compiled)
  for _ in range(warmup):
    step()
  times = [step() for _ in range(steps)]
  median = statistics.median(times)
  return {
    "step_times_s": times,
    "median_step_s": median,
    "images_per_s": case.batch_size / median,
  }


def format_result(r: dict[str, Any]) -> str:
  """One human-readable line."""
  line = f"{r['label']}: compile {r['compile_s']:.1f} s"
  if "median_step_s" in r:
    line += (
      f", step {r['median_step_s'] * 1e3:.0f} ms, {r['images_per_s']:.1f} img/s,"
      f" {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s ({100 * r['fraction_of_peak']:.0f}% of"
      f" {r['peak_flops_per_s'] / 1e9:.0f})"
    )
  return line + f", peak memory {r['peak_memory_mib']:.0f} MiB"


class _Parser(cli.UsageParser):
  """``cli.UsageParser`` whose error lines start with ``context`` (where the flags came from)."""

  def __init__(self, *args, context: str = "", **kwargs):
    super().__init__(*args, **kwargs)
    self.context = context

  def error(self, message: str) -> None:
    super().error(f"{self.context}{message}")


def parser(context: str = "") -> argparse.ArgumentParser:
  """The flags of one case; numbers and choices are checked while parsing."""
  p = _Parser(
    prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0], context=context
  )
  defaults = Case()
  depths = tuple(nfresnet.layout.RESNET_DEPTHS)
  p.add_argument("--model", choices=workload.model_choices(), default=defaults.model)
  p.add_argument("--depth", type=int, choices=depths, default=defaults.depth)
  p.add_argument("--resolution", type=cli.positive_int, default=defaults.resolution)
  p.add_argument("--batch_size", type=cli.positive_int, default=defaults.batch_size)
  p.add_argument("--mode", choices=workload.MODES, default=defaults.mode)
  p.add_argument("--compute_dtype", choices=workload.COMPUTE_DTYPES, default=defaults.compute_dtype)
  p.add_argument("--stem", choices=nfresnet.layout.STEMS, default=defaults.stem)
  p.add_argument("--num_classes", type=cli.positive_int, default=defaults.num_classes)
  p.add_argument("--stack_blocks", type=cli.parse_bool, default=False)
  p.add_argument("--weight_standardization", type=cli.parse_bool, default=True)
  p.add_argument("--frozen", type=cli.parse_bool, default=False)
  p.add_argument("--conv_impl", choices=CONV_IMPLS, default=defaults.conv_impl)
  p.add_argument(
    "--steps", type=cli.non_negative_int, default=5, help="timed steps; 0 compiles only"
  )
  p.add_argument("--warmup", type=cli.non_negative_int, default=2)
  p.add_argument(
    "--peak_flops", type=cli.positive_float, default=None, help="skip measuring the peak"
  )
  p.add_argument("--json", action="store_true", help="print one JSON object")
  return p


def parse_args(argv: list[str] | None = None, context: str = "") -> argparse.Namespace:
  return parser(context).parse_args(argv)


def case_of(args: argparse.Namespace) -> Case:
  """The ``Case`` of parsed flags."""
  fields = {f.name for f in dataclasses.fields(Case)}
  return Case(**{k: v for k, v in vars(args).items() if k in fields})


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  case = case_of(args)
  try:
    workload.check_case(case)  # Combinations only (frozen train, batch vs devices, ...).
  except ValueError as error:
    return cli.fail(str(error))
  result = measure(case, steps=args.steps, warmup=args.warmup, peak_flops=args.peak_flops)
  print(json.dumps(result) if args.json else format_result(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
