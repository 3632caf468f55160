"""Peak memory of the compiled training step, as XLA's memory analysis estimates it.

Usage::

  python -m benchmarks.memory [--model=nf_resnet] [--depth=50,152] [--resolution=64,224] \
    [--batch_size=32] [--remat=false,true] [--grad_accum_steps=1] [--stack_blocks] \
    [--compute_dtype=float32] [--machine=NAME] [--out_dir=...] [--force]

Every combination of ``--depth``, ``--resolution``, ``--grad_accum_steps`` and ``--remat``
(comma-separated lists) builds the real training step through ``experiments.builder.build``
on one device (the base config's Nesterov SGD, label smoothing; no EMA), lowers and
compiles it for abstract arguments
(nothing is initialized or run) and reads ``compiled.memory_analysis()``: the bytes of the
arguments (state and batch), outputs, aliased buffers (the donated state, counted in both)
and temporaries (activations kept for the backward pass, workspace). The estimated peak is
``argument + output - alias + temp``. XLA plans these buffers statically, so the numbers do
not depend on the load of the machine; on CPU they are what the program would need on an
accelerator with the same XLA buffer assignment, not the process's resident set.

Writes ``<out_dir>/memory-<machine>.json`` (every field) and ``.md`` (the table). A results
file written with other arguments, or not by this command, is only overwritten with
``--force``; the check happens before anything is compiled. While a run is under way the
results so far are in ``memory-<machine>.incomplete.json`` and ``.md``, renamed when the
last case is done, so an interrupted run leaves the previous results as they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import results_guard, suite, workload
from experiments import builder, cli, steps

OUT_DIR = suite.OUT_DIR
MIB = 2**20
FIELDS = ("argument", "output", "alias", "temp", "generated_code")
"""``CompiledMemoryStats.<field>_size_in_bytes`` recorded for every case."""


@dataclasses.dataclass(frozen=True)
class MemoryCase:
  """One training step to measure.

  Attributes:
    model: a ResNet-family model name (``benchmarks.workload.model_choices``).
    depth: ResNet depth.
    resolution: square input size.
    batch_size: global batch (one device).
    remat: ``model.remat``: recompute block activations in the backward pass.
    grad_accum_steps: ``train.grad_accum_steps``.
    stack_blocks: NF-ResNet only: scan over each stage's identical blocks.
    compute_dtype: "float32" or "bfloat16".
  """

  model: str = "nf_resnet"
  depth: int = 50
  resolution: int = 64
  batch_size: int = 32
  remat: bool = False
  grad_accum_steps: int = 1
  stack_blocks: bool = False
  compute_dtype: str = "float32"

  def label(self) -> str:
    parts = [f"{workload.Case(self.model).model_name}-{self.depth}", f"{self.resolution}px"]
    parts += [f"b{self.batch_size}", self.compute_dtype]
    if self.grad_accum_steps > 1:
      parts.append(f"accum{self.grad_accum_steps}")
    if self.stack_blocks:
      parts.append("stacked")
    parts.append("remat" if self.remat else "no remat")
    return " ".join(parts)


def experiment(case: MemoryCase) -> builder.Experiment:
  """``experiments.builder.build`` of the case's config on the first device."""
  bench = workload.Case(
    case.model,
    depth=case.depth,
    resolution=case.resolution,
    batch_size=case.batch_size,
    compute_dtype=case.compute_dtype,
    stack_blocks=case.stack_blocks,
  )
  config = workload.experiment_config(bench)
  config.model.remat = case.remat
  config.train.grad_accum_steps = case.grad_accum_steps
  return builder.build(
    config,
    bench.num_classes,
    workload.STEPS_PER_RUN * case.batch_size,
    devices=jax.devices()[:1],
  )


def measure(case: MemoryCase) -> dict[str, Any]:
  """Compiles the case's training step; returns its memory analysis and compile time."""
  start = time.perf_counter()
  exp = experiment(case)
  image_shape = (case.resolution, case.resolution, 3)
  sharded = steps.batch_sharding(exp.mesh)
  batch = {
    "image": jax.ShapeDtypeStruct((case.batch_size, *image_shape), jnp.float32, sharding=sharded),
    "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32, sharding=sharded),
  }
  compiled = exp.train_step.lower(exp.abstract_state(image_shape), batch).compile()
  stats = compiled.memory_analysis()
  out: dict[str, Any] = {f"{f}_bytes": int(getattr(stats, f"{f}_size_in_bytes")) for f in FIELDS}
  out["peak_bytes"] = (
    out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  )
  out["xla_peak_memory_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
  out["compile_s"] = time.perf_counter() - start
  return out


def device_label() -> str:
  """``CPU (XLA memory analysis)``, or the accelerator's kind."""
  device = jax.devices()[0]
  kind = "CPU" if device.platform == "cpu" else device.device_kind
  return f"{kind} (XLA memory analysis)"


def markdown(payload: dict[str, Any]) -> str:
  """The results table."""
  lines = [
    f"# Training-step memory: {payload['machine']}",
    "",
    f"Device: {payload['device']}, jax {payload['jax']}. Command: `{payload['command']}`.",
    "",
    "Estimated peak = arguments + outputs - aliased (donated state) + temporaries, from",
    "`jax.jit(train_step).lower(...).compile().memory_analysis()`; MiB = 2^20 bytes.",
    "",
    "| case | peak MiB | temp MiB | arguments MiB | outputs MiB | aliased MiB | compile s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in payload["results"]:
    if "error" in row:
      lines.append(f"| {row['label']} | error: {row['error']} | | | | | |")
      continue
    mib = {k: row[f"{k}_bytes"] / MIB for k in ("peak", "temp", "argument", "output", "alias")}
    lines.append(
      f"| {row['label']} | {mib['peak']:.1f} | {mib['temp']:.1f} | {mib['argument']:.1f} "
      f"| {mib['output']:.1f} | {mib['alias']:.1f} | {row['compile_s']:.0f} |"
    )
  return "\n".join(lines) + "\n"


def overwrite_error(stem: pathlib.Path, arguments: dict[str, Any]) -> str | None:
  """Why ``<stem>.json``/``.md`` must not be overwritten by this run without ``--force``."""
  payload, why = results_guard.previous(stem, "benchmarks.memory", "arguments")
  if payload is not None and payload["arguments"] != arguments:
    why = f"{stem}.json holds the cases of `{payload.get('command')}`, not of this run"
  return why


def write(stem: pathlib.Path, payload: dict[str, Any]) -> None:
  """Writes ``<stem>.json`` and ``<stem>.md``."""
  stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
  stem.with_name(stem.name + ".md").write_text(markdown(payload))


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
  """An argparse ``type``: comma-separated values, each parsed by ``kind``."""

  def parse(text: str) -> list[Any]:
    values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
      raise argparse.ArgumentTypeError(f"{text!r} is empty")
    return values

  parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
  return parse


def cases_of(args: argparse.Namespace) -> list[MemoryCase]:
  """Every combination of the list arguments, in command-line order."""
  return [
    MemoryCase(
      model=args.model,
      depth=depth,
      resolution=resolution,
      batch_size=args.batch_size,
      remat=remat,
      grad_accum_steps=accum,
      stack_blocks=args.stack_blocks,
      compute_dtype=args.compute_dtype,
    )
    for depth, resolution, accum, remat in itertools.product(
      args.depth, args.resolution, args.grad_accum_steps, args.remat
    )
  ]


def check(case: MemoryCase) -> None:
  """Raises ``ValueError`` or ``ConfigError`` naming a bad value (nothing is compiled)."""
  workload.check_case(
    workload.Case(
      case.model,
      depth=case.depth,
      resolution=case.resolution,
      batch_size=jax.device_count(),  # The global batch is checked on one device below.
      stack_blocks=case.stack_blocks,
      compute_dtype=case.compute_dtype,
    )
  )
  config = workload.experiment_config(workload.Case(case.model, depth=case.depth))
  config.train.batch_size = case.batch_size
  config.train.grad_accum_steps = case.grad_accum_steps
  config.model.remat = case.remat
  builder.check_config(config, 1)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = cli.UsageParser(prog="python -m benchmarks.memory", description=__doc__)
  parser.add_argument("--model", choices=workload.model_choices(), default="nf_resnet")
  parser.add_argument("--depth", type=comma_list(cli.positive_int), default=[50])
  parser.add_argument("--resolution", type=comma_list(cli.positive_int), default=[64])
  parser.add_argument("--batch_size", type=cli.positive_int, default=32)
  parser.add_argument(
    "--remat", type=comma_list(cli.parse_bool), default=[False, True], help="e.g. false,true"
  )
  parser.add_argument("--grad_accum_steps", type=comma_list(cli.positive_int), default=[1])
  parser.add_argument("--stack_blocks", action="store_true", help="nf_resnet only")
  parser.add_argument("--compute_dtype", choices=workload.COMPUTE_DTYPES, default="float32")
  parser.add_argument("--machine", type=suite.file_label, default=None)
  parser.add_argument("--out_dir", default=str(OUT_DIR))
  parser.add_argument(
    "--force", action="store_true", help="overwrite results written with other arguments"
  )
  args = parser.parse_args(argv)
  cases = cases_of(args)
  for case in cases:
    try:
      check(case)
    except ValueError as error:  # ConfigError is a ValueError.
      return cli.fail(f"{case.label()}: {error}")
  out_dir = pathlib.Path(args.out_dir)
  why = results_guard.out_dir_problem(args.out_dir)
  if why:
    return cli.fail(why)
  machine = args.machine or suite.default_machine()
  stem = out_dir / f"memory-{machine}"
  arguments = {k: v for k, v in vars(args).items() if k not in ("machine", "out_dir", "force")}
  why = None if args.force else overwrite_error(stem, arguments)
  if why:
    return cli.fail(f"{why}; pass --force to overwrite it")
  why = results_guard.make_out_dir(args.out_dir)
  if why:
    return cli.fail(why)
  payload: dict[str, Any] = {
    "machine": machine,
    "device": device_label(),
    "jax": jax.__version__,
    "command": shlex.join(["python", "-m", "benchmarks.memory", *argv]),
    "arguments": arguments,
    "results": [],
  }
  progress = stem.with_name(stem.name + ".incomplete")  # After every case; renamed at the end.
  for case in cases:
    row: dict[str, Any] = {"label": case.label(), **dataclasses.asdict(case)}
    try:
      row.update(measure(case))
    except Exception as error:  # noqa: BLE001 - one failed case is reported in the table.
      row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    payload["results"].append(row)
    summary = row.get("error") or f"peak {row['peak_bytes'] / MIB:.1f} MiB"
    print(f"{case.label()}: {summary}", flush=True)
    write(progress, payload)
  suite.finish(progress, stem)
  print(f"wrote {stem}.json and .md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
