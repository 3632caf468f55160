"""Two or more cases in one process, their timed steps interleaved: ratios without process noise.

On the 2-core CPU machine the same program runs up to 10-20% faster or slower in
one process than in another (benchmarks/NOTES.md), which is as large as the
ratios some goals ask about. Timing the cases in one process, one step of each in
turn, removes that and spreads any slow phase of the machine over all cases.

Usage::

  python -m benchmarks.interleaved --rounds=10 \\
    --case=model=nf_resnet,depth=18,resolution=32,batch_size=128,stem=cifar,mode=eval \\
    --case=model=resnet_v2,depth=18,resolution=32,batch_size=128,stem=cifar,mode=eval

Each ``--case`` sets fields of ``benchmarks.workload.Case`` (the others keep
their defaults). Prints each case's median and minimum step time and the ratio
of every case's median to the first one's; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import throughput, workload
from benchmarks.workload import Case
from experiments import cli

FIELDS = {f.name: type(f.default) for f in dataclasses.fields(Case)}


def parse_case(spec: str) -> Case:
  """``key=value,...`` over ``Case`` fields, typed by each field's default."""
  kwargs: dict[str, Any] = {}
  for item in filter(None, spec.split(",")):
    key, sep, text = item.partition("=")
    if not sep or key not in FIELDS:
      raise ValueError(f"--case: bad item {item!r}; allowed keys: {', '.join(FIELDS)}")
    kind = FIELDS[key]
    if kind is bool:
      if text.lower() not in ("true", "false"):
        raise ValueError(f"--case: {key}={text!r} is not a boolean (true/false)")
      kwargs[key] = text.lower() == "true"
    else:
      try:
        kwargs[key] = kind(text)
      except ValueError:
        raise ValueError(f"--case: {key}={text!r} is not a {kind.__name__}") from None
  case = Case(**kwargs)
  workload.check_case(case)
  return case


def interleave(cases: Sequence[Case], rounds: int, warmup: int = 1) -> list[dict[str, Any]]:
  """Compiles every case, then times ``rounds`` rounds of one step of each in turn."""
  steppers = []
  for case in cases:
    built = workload.build(case)
    compiled = built.step.lower(*built.abstract_args).compile()
    steppers.append(throughput.stepper(case, built, compiled))
  for step in steppers:
    for _ in range(warmup):
      step()
  times: list[list[float]] = [[] for _ in cases]
  for _ in range(rounds):
    for step, case_times in zip(steppers, times, strict=True):
      case_times.append(step())
  first = statistics.median(times[0])
  return [
    {
      "label": case.label(),
      "case": dataclasses.asdict(case),
      "step_times_s": t,
      "median_step_s": statistics.median(t),
      "min_step_s": min(t),
      "median_ratio_to_first": statistics.median(t) / first,
    }
    for case, t in zip(cases, times, strict=True)
  ]


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.UsageParser(
    prog="python -m benchmarks.interleaved", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--case", action="append", required=True, help="key=value,... (repeat)")
  parser.add_argument("--rounds", type=cli.positive_int, default=10)
  parser.add_argument("--warmup", type=cli.non_negative_int, default=1)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if len(args.case) < 2:
    parser.error(f"need two or more --case, got {len(args.case)}: {args.case}")
  try:
    cases = [parse_case(spec) for spec in args.case]
  except ValueError as error:
    parser.error(str(error))
  results = interleave(cases, args.rounds, args.warmup)
  if args.json:
    print(json.dumps({"results": results, "machine": throughput.machine()}))
    return 0
  for r in results:
    print(
      f"{r['label']}: median {r['median_step_s'] * 1e3:.0f} ms, min {r['min_step_s'] * 1e3:.0f} ms,"
      f" median / first {r['median_ratio_to_first']:.3f}"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
