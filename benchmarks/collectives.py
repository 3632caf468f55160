r"""Collectives of one data-parallel training step: how many, how many bytes, and what for.

Usage::

  python -m benchmarks.collectives [--devices=8] [--depth=50] [--resolution=32] \
    [--batch_per_device=32] [--width=1.0] [--compiled] [--json=PATH]

Builds the training step (``experiments.builder.build``) on a 1-D mesh of ``--devices``
devices (fake CPU devices: the flag sets ``XLA_FLAGS`` before JAX starts) for three
models: NF-ResNet, BN-ResNet-V2 with per-device statistics, and BN-ResNet-V2 with
cross-replica statistics (``train.cross_replica_bn``). It counts the collectives of the
lowered step (StableHLO, as the program asks for them, before XLA merges any) and sorts
them by purpose from the Haiku module path of each op:

- ``gradients``: the all-reduce (mean over devices) of the parameter gradients, one per
  parameter array;
- ``bn statistics``: cross-replica BatchNorm's all-reduces of the batch mean and mean
  square (forward) and of their cotangents (backward), inside the layer's computation;
- ``bn moving averages``: the mean over devices of the BatchNorm moving statistics (the
  model state), once per step after the forward pass;
- ``metrics``: scalar means of the loss, accuracy and norms.

Bytes are those of the all-reduced operands per step on each device. ``--compiled`` also
compiles the step and counts the all-reduces of the optimized HLO, where XLA's all-reduce
combiner merges many into few (that is what runs; the lowered counts say what for).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence

from experiments import cli

MODELS = (("NF-ResNet", "nf_resnet", False), ("BN-ResNet", "resnet_v2", False))
CROSS_REPLICA = ("BN-ResNet, cross-replica BN", "resnet_v2", True)
KINDS = ("gradients", "bn statistics", "bn moving averages", "metrics", "other")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "ui32": 4, "f64": 8, "i64": 8, "i1": 1}
_ALL_REDUCE = re.compile(r'"stablehlo\.all_reduce"\((?P<operands>[^)]*)\)')
_TENSOR = re.compile(r"tensor<(?P<dims>(?:\d+x)*)(?P<dtype>[a-z0-9]+)>")
_LOC = re.compile(r"^#(?P<id>loc\d+) = loc\((?P<body>.*)\)$")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One all-reduce of the lowered step: its purpose, operand count and bytes."""

  kind: str
  operands: int
  bytes: int


def tensor_bytes(text: str) -> int:
  """Bytes of every ``tensor<AxBxf32>`` type in ``text``."""
  total = 0
  for match in _TENSOR.finditer(text):
    size = 1
    for dim in filter(None, match["dims"].split("x")):
      size *= int(dim)
    total += size * DTYPE_BYTES.get(match["dtype"], 4)
  return total


def location_names(text: str) -> dict[str, str]:
  """``{"loc12": "name | caller | ..."}``: each location's names, its parents' appended."""
  raw = {m["id"]: m["body"] for line in text.splitlines() if (m := _LOC.match(line))}
  resolved: dict[str, str] = {}

  def resolve(loc: str, depth: int = 0) -> str:
    if loc in resolved or depth > 8:
      return resolved.get(loc, "")
    body = raw.get(loc, "")
    parts = re.findall(r'"([^"]*)"', body)
    parts += [resolve(ref, depth + 1) for ref in re.findall(r"#(loc\d+)", body)]
    resolved[loc] = " | ".join(p for p in parts if p)
    return resolved[loc]

  for loc in raw:
    resolve(loc)
  return resolved


def classify(name: str) -> str:
  """The purpose of an all-reduce from its location: the named scope or Haiku module path."""
  from experiments import steps  # Deferred: JAX starts after --devices is applied.

  if "BatchNorm" in name:
    return "bn statistics"
  if "mean_over_devices" in name:
    return "bn moving averages"
  if steps.GRADIENT_MEAN in name:
    return "gradients"
  if steps.METRICS_MEAN in name:
    return "metrics"
  return "other"


def lowered_collectives(text: str) -> list[Collective]:
  """The all-reduces of a lowered module (``lower(...).as_text(debug_info=True)``).

  Each ``stablehlo.all_reduce`` spans several lines (its reduction region); its operand
  types and location are on the line that closes the region.
  """
  names = location_names(text)
  lines = text.splitlines()
  found = []
  for index, line in enumerate(lines):
    if '"stablehlo.all_reduce"' not in line:
      continue
    end = next(i for i in range(index, len(lines)) if re.match(r"^\s*\}\) : ", lines[i]))
    inputs = lines[end].split(" : ", 1)[1].split("->")[0]
    loc = re.search(r"loc\(#(loc\d+)\)\s*$", lines[end])
    name = names.get(loc.group(1), "") if loc else ""
    found.append(Collective(classify(name), len(_TENSOR.findall(inputs)), tensor_bytes(inputs)))
  return found


def compiled_all_reduces(hlo: str) -> tuple[int, int]:
  """``(count, bytes)`` of the all-reduce ops (start ops for async ones) of optimized HLO."""
  count, total = 0, 0
  for line in hlo.splitlines():
    if re.search(r"= .* all-reduce(-start)?\(", line):
      count += 1
      result = line.split("=", 1)[1].split("all-reduce", 1)[0]
      total += sum(
        _hlo_shape_bytes(dtype, dims) for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result)
      )
  return count, total


def _hlo_shape_bytes(dtype: str, dims: str) -> int:
  size = 1
  for dim in filter(None, dims.split(",")):
    size *= int(dim)
  return size * {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1}.get(dtype, 4)


def measure(
  name: str, model_name: str, cross_replica: bool, args: object, compiled: bool
) -> dict[str, object]:
  """The collectives of one model's training step (lowered, and optimized if ``compiled``)."""
  import jax
  import jax.numpy as jnp

  from benchmarks import workload
  from experiments import builder

  case = workload.Case(
    model=model_name,
    depth=args.depth,
    resolution=args.resolution,
    batch_size=args.batch_per_device * args.devices,
    stem="cifar" if args.resolution <= 64 else "imagenet",
    num_classes=10,
  )
  config = workload.experiment_config(case)
  config.model.width = args.width
  config.train.cross_replica_bn = cross_replica
  devices = jax.devices()[: args.devices]
  experiment = builder.build(config, 10, 1000 * case.batch_size, devices=devices)
  state = experiment.abstract_state((args.resolution, args.resolution, 3))
  sharding = jax.sharding.NamedSharding(experiment.mesh, jax.sharding.PartitionSpec("data"))
  batch = {
    "image": jax.ShapeDtypeStruct(
      (case.batch_size, args.resolution, args.resolution, 3), jnp.float32, sharding=sharding
    ),
    "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32, sharding=sharding),
  }
  lowered = experiment.train_step.lower(state, batch)
  found = lowered_collectives(lowered.as_text(debug_info=True))
  counts = Counter(c.kind for c in found)
  sizes = Counter()
  for c in found:
    sizes[c.kind] += c.bytes
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
  row = {
    "model": name,
    "devices": args.devices,
    "parameter_bytes": int(params),
    "lowered": {kind: {"ops": counts[kind], "bytes": sizes[kind]} for kind in KINDS},
  }
  if compiled:
    count, total = compiled_all_reduces(lowered.compile().as_text())
    row["compiled"] = {"all_reduce_ops": count, "bytes": total}
  return row


def table(rows: Sequence[dict[str, object]]) -> str:
  """A markdown table of the rows: ops and bytes per kind, per device and step."""
  head = " | ".join(f"{kind} (ops, MB)" for kind in KINDS)
  lines = [
    f"| model | devices | parameters (MB) | {head} | compiled all-reduces (ops, MB) |",
    "| --- | --- | --- | " + "--- | " * len(KINDS) + "--- |",
  ]
  for row in rows:
    low = row["lowered"]
    comp = row.get("compiled")
    compiled = f"{comp['all_reduce_ops']}, {comp['bytes'] / 1e6:.3f}" if comp else "not compiled"
    cells = " | ".join(f"{low[k]['ops']}, {low[k]['bytes'] / 1e6:.3f}" for k in KINDS)
    lines.append(
      f"| {row['model']} | {row['devices']} | {row['parameter_bytes'] / 1e6:.3f} | {cells} "
      f"| {compiled} |"
    )
  return "\n".join(lines)


TPU_V4 = {
  "name": "TPU v4",
  "peak_flops": 275e12,  # bf16 per chip (Cloud TPU v4 documentation).
  "allreduce_bytes_per_s": 1.1e15 / 4096,  # All-reduce bandwidth per pod / chips per pod.
}
HOP_LATENCY_S = 1e-6  # Assumed: per hop of a 3-D torus; not a published figure.
CHIPS = (8, 64, 512, 4096)
PER_CHIP_BATCHES = (32, 128)
TRAIN_FLOPS_PER_MAC = 6  # 2 FLOPs per multiply-accumulate, forward + backward = 3 passes.


def allreduce_seconds(nbytes: float, chips: int, chip: dict) -> float:
  """Modelled all-reduce time: a latency of ``3 * chips**(1/3)`` hops plus the bandwidth term."""
  latency = HOP_LATENCY_S * 3 * chips ** (1 / 3)
  return latency + 2 * nbytes * (chips - 1) / chips / chip["allreduce_bytes_per_s"]


def projection(rows: Sequence[dict], macs_per_image: int, chip: dict = TPU_V4) -> str:
  """Modelled step time and the share of BN collectives, from measured counts and bytes.

  Compute is FLOPs over the chip's peak (a lower bound); the gradient all-reduce is not
  overlapped with the backward pass (an upper bound); cross-replica BN issues its
  all-reduces one layer at a time on the critical path, two per layer after XLA combines
  the mean with the mean square (forward) and their cotangents (backward).
  """
  lines = [
    "| model | chips | per-chip batch | compute (ms) | gradient all-reduce (ms) "
    "| BN all-reduces (ms) | step (ms) | BN share |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for row in rows:
    low = row["lowered"]
    layers_collectives = low["bn statistics"]["ops"] // 2
    per_layer_bytes = low["bn statistics"]["bytes"] / max(layers_collectives, 1)
    for chips in CHIPS:
      for batch in PER_CHIP_BATCHES:
        compute = TRAIN_FLOPS_PER_MAC * macs_per_image * batch / chip["peak_flops"]
        grads = allreduce_seconds(low["gradients"]["bytes"] / 2, chips, chip)  # bf16 gradients.
        bn = layers_collectives * allreduce_seconds(per_layer_bytes, chips, chip)
        step = compute + grads + bn
        lines.append(
          f"| {row['model']} | {chips} | {batch} | {compute * 1e3:.2f} | {grads * 1e3:.2f} "
          f"| {bn * 1e3:.2f} | {step * 1e3:.2f} | {bn / step:.0%} |"
        )
  return "\n".join(lines)


def resnet50_macs(resolution: int = 224) -> int:
  """Multiply-accumulates per image of NF-ResNet-50 at ``resolution`` (the same for BN)."""
  import nfresnet

  return nfresnet.count_macs(
    lambda x: nfresnet.NFResNet(1000, depth=50)(x, is_training=False),
    (1, resolution, resolution, 3),
  )


def parse(argv: Sequence[str] | None):
  parser = cli.UsageParser(prog="python -m benchmarks.collectives", description=__doc__)
  parser.add_argument("--devices", type=cli.positive_int, default=8)
  parser.add_argument("--depth", type=int, choices=(18, 26, 34, 50, 101, 152, 200), default=50)
  parser.add_argument("--resolution", type=cli.positive_int, default=32)
  parser.add_argument("--batch_per_device", type=cli.positive_int, default=32)
  parser.add_argument("--width", type=cli.positive_float, default=1.0)
  parser.add_argument("--compiled", action="store_true", help="also count the optimized HLO's")
  parser.add_argument("--json", default=None, help="write the rows to this JSON file")
  parser.add_argument(
    "--project", action="store_true", help="the TPU v4 pod projection (docs/scaling.md)"
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse(argv)
  if "jax" not in sys.modules:  # Fake CPU devices must be asked for before JAX starts.
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
  import jax

  if jax.device_count() < args.devices:
    return cli.fail(f"--devices={args.devices}: only {jax.device_count()} devices are available")
  rows = [measure(*model, args, args.compiled) for model in (*MODELS, CROSS_REPLICA)]
  print(
    f"Collectives of one training step: {jax.devices()[0].platform} x {args.devices}, "
    f"ResNet-{args.depth} width {args.width}, {args.resolution} px, "
    f"{args.batch_per_device} images per device"
  )
  print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  if args.project:
    macs = resnet50_macs()
    print(f"\nProjection ({TPU_V4['name']}, modelled; {macs / 1e9:.2f} GMACs per 224 px image):")
    print(projection(rows, macs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
