"""Our NF- and BN-ResNets against timm's on the same CPU threads, timed in alternating rounds.

Usage::

  python -m benchmarks.peers [--rounds=3] [--steps=N] [--warmup=1] [--threads=2] \\
    [--omp_wait_policy=passive] [--only=SUBSTRING[,SUBSTRING...]] [--list] \\
    [--peers_venv=.venv-peers] [--no_create] [--machine=NAME] [--out_dir=...] [--force]

Each case of ``benchmarks.peers_cases.CASES`` is one of our models
(``benchmarks.peers_ours``: ``benchmarks.workload``'s real train or eval step, or the
step of a reproduction-study config) and the timm model of the same shape. The timm side
runs in a long-lived worker process in a side virtual environment
(``benchmarks.peers_torch``, torch and timm, no JAX; started by
``benchmarks.peers_env``) that answers JSON-line requests; our side runs here. Both
sides are compiled or built and warmed up first, then the case runs ``--rounds`` rounds
of ``--steps`` steps of ours, then of timm's, then ours again (ABAB...), so a slow phase
of the shared machine touches both and neither side's start-up is timed. Same batch,
same random-normal float32 images, same optimizer (SGD, Nesterov momentum 0.9, weight
decay 5e-5, label smoothing 0.1), same threads: this process and the worker are pinned
to the first ``--threads`` CPUs it may use and the worker sets
``torch.set_num_threads``; XLA flags come from ``XLA_FLAGS``, as for every benchmark.
The worker's OpenMP threads wait passively (``--omp_wait_policy``, ``OMP_WAIT_POLICY``):
on a shared machine spinning waits make torch many times slower.

A round's images/s is ``batch * steps / (sum of its step times)``. Each case prints
both sides' median over rounds with the min-max spread, the median and spread of the
per-round ratios ours / timm, and the 1-minute load average during the rounds.

The side environment (``benchmarks.peers_env``; default ``.venv-peers`` at the
repository root) is reused when its python can import torch and timm, else created (or
repaired) with pip: torch and torchvision from the CPU wheel index, then setup.py's
``PEERS`` requirements; ``--no_create`` fails instead. Results:
``<out_dir>/peers-<machine>.json`` and ``.md`` (``-only-<slug>`` appended for
``--only``), written through an ``.incomplete`` pair after each case; a file written for
another selection (``--only``, ``--threads``, ``--omp_wait_policy``) is only replaced
with ``--force``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

from benchmarks import peers_cases, peers_env, peers_ours, results_guard, suite, throughput
from experiments import cli

OUT_DIR = suite.OUT_DIR
TOOL = "benchmarks.peers"
SELECTION = ("only", "threads", "omp_wait_policy")  # Their change: another results file.
WAIT_POLICIES = ("passive", "active", "unset")


# Timing and arithmetic.


def interleave(
  ours: Callable[[int], list[float]], timm: Callable[[int], list[float]], rounds: int, steps: int
) -> dict[str, list]:
  """``rounds`` rounds of ``steps`` steps of ours, then timm's; step times and load per round."""
  times: dict[str, list] = {"ours": [], "timm": [], "load": []}
  for _ in range(rounds):
    times["ours"].append(ours(steps))
    times["timm"].append(timm(steps))
    times["load"].append(os.getloadavg()[0])
  return times


def images_per_s(batch_size: int, step_times: Sequence[float]) -> float:
  """A round's throughput: ``batch * steps / total time``."""
  return batch_size * len(step_times) / sum(step_times)


def spread(values: Sequence[float]) -> dict[str, float]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(batch_size: int, times: dict[str, list]) -> dict[str, Any]:
  """Per-round images/s of both sides, their ratios, and median (min-max) of each."""
  ours = [images_per_s(batch_size, t) for t in times["ours"]]
  timm = [images_per_s(batch_size, t) for t in times["timm"]]
  ratio = [a / b for a, b in zip(ours, timm, strict=True)]
  return {
    "ours_images_per_s": spread(ours),
    "timm_images_per_s": spread(timm),
    "ratio": spread(ratio),
    "load": spread(times["load"]),
    "rounds": {"ours": ours, "timm": timm, "ratio": ratio, "load": times["load"]},
    "step_times_s": {"ours": times["ours"], "timm": times["timm"]},
  }


def measure(
  case: peers_cases.PeerCase, worker: peers_env.Worker, rounds: int, steps: int, warmup: int
) -> dict:
  """Prepares both sides of ``case`` and times them in alternating rounds."""
  step, ours_info = peers_ours.prepare_ours(case, warmup)
  timm_info = worker.request("prepare", case=case.name, spec=case.timm_spec(), warmup=warmup)
  try:
    times = interleave(
      lambda n: [step() for _ in range(n)],
      lambda n: worker.request("time", case=case.name, steps=n)["step_times_s"],
      rounds,
      steps,
    )
  finally:
    worker.request("release", case=case.name)
  result = summarize(case.batch_size, times)
  result.update(steps=steps, ours_compile_s=ours_info["compile_s"])
  result["params"] = {"ours": ours_info["params"], "timm": timm_info["params"]}
  return result


def summary_line(row: dict[str, Any]) -> str:
  """One printed line per case."""
  if "error" in row:
    return f"{row['name']}: error: {row['error']}"
  if "skipped" in row:
    return f"{row['name']}: not timed: timm {row['skipped']}"
  o, t, r, load = row["ours_images_per_s"], row["timm_images_per_s"], row["ratio"], row["load"]
  return (
    f"{row['name']}: ours {o['median']:.2f} img/s ({o['min']:.2f}-{o['max']:.2f}), timm"
    f" {t['median']:.2f} img/s ({t['min']:.2f}-{t['max']:.2f}), ours/timm {r['median']:.2f}"
    f" ({r['min']:.2f}-{r['max']:.2f}), load {load['min']:.1f}-{load['max']:.1f}"
  )


# Results files.


def markdown(payload: dict[str, Any]) -> str:
  """The results table."""
  lines = [
    f"# Ours vs timm: {payload['machine']}",
    "",
    f"Command: `{payload['command']}`. jax {payload['jax']}, torch {payload['torch']}, timm"
    f" {payload['timm']}; {payload['threads']} threads per side (timm's OpenMP wait policy:"
    f" {payload.get('omp_wait_policy', 'unset')}); {payload['rounds']} rounds of alternating"
    " timed steps (ours, timm, ours, ...).",
    "",
    "Images/s: median over rounds (min-max). Ours/timm: median (min-max) of the per-round ratios."
    " Load: 1-minute load average after each round (min-max); on 2 cores a load above 2 means"
    " the machine was shared.",
    "",
    "| case | ours | timm | steps/round | ours img/s | timm img/s | ours/timm | params ours / timm"
    " | load |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in payload["results"]:
    head = f"| {row['name']} | {row['label']} | {row['timm_label']} |"
    if "error" in row or "skipped" in row:
      what = f"error: {row['error']}" if "error" in row else "not timed"
      lines.append(f"{head} | {what} | | | | |")
      continue
    cells = [
      f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})"
      for k in ("ours_images_per_s", "timm_images_per_s", "ratio")
    ]
    params = f"{row['params']['ours'] / 1e6:.2f}M / {row['params']['timm'] / 1e6:.2f}M"
    load = f"{row['load']['min']:.1f}-{row['load']['max']:.1f}"
    lines.append(f"{head} {row['steps']} | {' | '.join(cells)} | {params} | {load} |")
  return "\n".join(lines) + "\n"


def write(stem: pathlib.Path, payload: dict[str, Any]) -> None:
  """Writes ``<stem>.json`` and ``<stem>.md``."""
  stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
  stem.with_name(stem.name + ".md").write_text(markdown(payload))


def overwrite_error(stem: pathlib.Path, arguments: dict[str, Any]) -> str | None:
  """Why ``<stem>.json``/``.md`` must not be replaced by this run without ``--force``."""
  payload, why = results_guard.previous(stem, TOOL, "arguments")
  if payload is not None and any(payload["arguments"].get(k) != arguments[k] for k in SELECTION):
    why = f"{stem}.json holds the cases of `{payload.get('command')}`, not of this run"
  return why


# The command line.


def parser() -> cli.UsageParser:
  p = cli.UsageParser(prog=f"python -m {TOOL}", description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=cli.positive_int, default=3)
  p.add_argument(
    "--steps", type=cli.positive_int, default=None, help="per round (default: per case)"
  )
  p.add_argument("--warmup", type=cli.non_negative_int, default=1, help="untimed steps per side")
  p.add_argument("--threads", type=cli.positive_int, default=2, help="CPU threads of each side")
  p.add_argument(
    "--omp_wait_policy", choices=WAIT_POLICIES, default="passive", help="OMP_WAIT_POLICY of timm"
  )
  p.add_argument("--only", default=None, help="comma-separated substrings of case names")
  p.add_argument("--list", action="store_true", help="print the cases and exit")
  p.add_argument("--peers_venv", type=pathlib.Path, default=peers_env.DEFAULT_VENV)
  p.add_argument("--no_create", action="store_true", help="fail instead of installing the venv")
  p.add_argument("--machine", type=suite.file_label, default=None)
  p.add_argument("--out_dir", default=str(OUT_DIR))
  p.add_argument("--force", action="store_true", help="replace results of another selection")
  return p


def list_line(case: peers_cases.PeerCase) -> str:
  return f"{case.name}: ours {case.label()}; timm {case.timm_label()}; {case.steps} steps/round"


def check_threads(threads: int) -> str | None:
  allowed = len(os.sched_getaffinity(0))
  if threads > allowed:
    return f"--threads={threads} is more than the {allowed} CPUs this process may use"
  return None


def pin_threads(threads: int) -> None:
  """Pins this process (and the worker it starts) to its first ``threads`` allowed CPUs.

  Runs before JAX starts its CPU client, whose thread pool is sized by the CPUs allowed.
  """
  allowed = sorted(os.sched_getaffinity(0))
  if len(allowed) > threads:
    os.sched_setaffinity(0, allowed[:threads])


def run_cases(
  cases, worker: peers_env.Worker, args, header: dict[str, Any], stem: pathlib.Path
) -> None:
  """Times every case, printing a line and rewriting the ``.incomplete`` files after each."""
  payload = {**header, "results": []}
  progress = stem.with_name(stem.name + ".incomplete")
  for case in cases:
    row: dict[str, Any] = {"name": case.name, "label": case.label()}
    row.update(timm_label=case.timm_label(), case=dataclasses.asdict(case))
    if case.timm is None:
      row["skipped"] = case.timm_label()
    else:
      try:
        row.update(measure(case, worker, args.rounds, args.steps or case.steps, args.warmup))
      except (RuntimeError, ValueError) as error:  # WorkerError, XLA errors, ConfigError.
        row["error"] = str(error).splitlines()[0]
    payload["results"].append(row)
    print(summary_line(row), flush=True)
    write(progress, payload)
  suite.finish(progress, stem)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser().parse_args(argv)
  cases = peers_cases.select(args.only)
  if not cases:
    names = ", ".join(case.name for case in peers_cases.CASES)
    return cli.fail(f"--only={args.only!r} matches no case; cases: {names}")
  if args.list:
    print("\n".join(list_line(case) for case in cases))
    return 0
  why = check_threads(args.threads)
  out_dir = pathlib.Path(args.out_dir)
  why = why or results_guard.out_dir_problem(args.out_dir)
  machine = args.machine or suite.default_machine()
  stem = out_dir / suite.results_stem(f"peers-{machine}", args.only)
  arguments = {k: getattr(args, k) for k in (*SELECTION, "rounds", "steps", "warmup")}
  if not why and not args.force:
    why = overwrite_error(stem, arguments)
    why = why and f"{why}; pass --force to overwrite it"
  if why:
    return cli.fail(why)
  failed = peers_env.ensure_venv(args.peers_venv, create=not args.no_create)
  if failed:
    return cli.fail(*failed)
  failed = results_guard.make_out_dir(args.out_dir)
  if failed:
    return cli.fail(failed)
  pin_threads(args.threads)
  command = peers_env.worker_command(peers_env.venv_python(args.peers_venv), args.threads)
  env = peers_env.worker_env(args.threads, args.omp_wait_policy)
  with peers_env.Worker(command, env) as worker:
    header = {
      "machine": machine,
      "command": shlex.join(["python", "-m", TOOL, *argv]),
      "arguments": arguments,
      "jax": jax.__version__,
      "torch": worker.hello.get("torch"),
      "timm": worker.hello.get("timm"),
      "threads": args.threads,
      "omp_wait_policy": args.omp_wait_policy,
      "rounds": args.rounds,
      "host": throughput.machine(),
    }
    run_cases(cases, worker, args, header, stem)
  print(f"wrote {stem}.json and .md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
