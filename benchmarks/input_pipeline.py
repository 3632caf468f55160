"""Input pipeline throughput: ImageNet-style training augmentation of JPEG files.

Usage::

  python -m benchmarks.input_pipeline [--images=1024] [--size=224] [--workers=1,2,4]
      [--batch_size=32] [--batches=32] [--resize_method=bicubic] [--machine=NAME]
      [--out_dir=...] [--data_dir=...] [--force]

Writes ``--images`` JPEGs of about 400 x 350 px (quality 90, smooth random content with
fine noise, ImageNet's typical size and file size) as an image folder, cached in
``--data_dir`` (default: a folder under the temporary directory named by the arguments),
then times the Inception-crop training batches of ``--size`` px, flip and normalization:

* ``numpy in-process``: the images decoded whole (Pillow, as TFDS decodes them) and cropped
  by ``augment.crop_resize``: the path of decoded sources;
* ``pillow in-process``: the encoded path (``jpeg``: ``Image.draft`` and a Pillow resize);
* ``pillow, W workers``: the same with ``data.worker_processes = W`` for each ``--workers``.

Rates are wall-clock images/s over ``--batches`` batches after one warm-up batch per
worker, and images per CPU-second (the CPU time of this process and its worker processes
over the same interval), which is the per-core rate even when other jobs share the cores.
Writes ``<out_dir>/input_pipeline-<machine>.json`` and ``.md``; a file written with other
arguments is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import results_guard
from experiments import cli

OUT_DIR = pathlib.Path(__file__).parent / "results"
TARGET_PER_CORE = 400.0  # images/s per core at 224 px.
# TPU v4 estimate (no v4 measurement in this repository): ResNet-50 trained at about
# 480,000 images/s on a TPU v3-512 (256 chips) in a public run of the MLPerf reference code,
# 1,875 images/s per v3 chip; scaled by the bf16 peaks of a v4 and a v3 chip (275 / 123
# TFLOP/s) that is about 4,200, rounded down to 4,000 for NF-ResNet-50 (same FLOPs as
# ResNet-50, plus weight standardization). A v4 host drives 4 chips.
V4_IMAGES_PER_CHIP = 4000.0
V4_CHIPS_PER_HOST = 4


def make_images(folder: pathlib.Path, count: int, classes: int = 8, seed: int = 0) -> None:
  """Writes ``count`` JPEGs of about 400 x 350 px as ``<folder>/train/c<k>/<i>.JPEG``."""
  from experiments.data import augment, jpeg  # noqa: PLC0415

  rng = np.random.default_rng(seed)
  for i in range(count):
    height, width = int(rng.integers(300, 400)), int(rng.integers(340, 460))
    coarse = rng.uniform(0, 255, (1, height // 24 + 2, width // 24 + 2, 3))
    base = augment.resize_batch(coarse, max(height, width), "bicubic")[0][:height, :width]
    image = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    path = folder / "train" / f"c{i % classes}" / f"{i:06d}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg.encode(image, 90))


def dataset(data_dir: str | None, count: int) -> pathlib.Path:
  """The cached image folder (written once, marked complete by a ``DONE`` file)."""
  folder = pathlib.Path(data_dir or os.path.join(tempfile.gettempdir(), f"nfresnet_jpegs_{count}"))
  if not (folder / "DONE").exists():
    make_images(folder, count)
    (folder / "DONE").write_text(f"{count} images\n")
  return folder


class DecodedSource:
  """An image folder decoded whole per example: the numpy path's input."""

  def __init__(self, encoded):
    self._encoded = encoded
    self.name, self.num_classes = encoded.name, encoded.num_classes
    self.image_shape, self.mean, self.std = encoded.image_shape, encoded.mean, encoded.std

  def __len__(self) -> int:
    return len(self._encoded)

  def __getitem__(self, index: int) -> dict:
    from experiments.data import jpeg  # noqa: PLC0415

    item = self._encoded[index]
    return {"image": jpeg.decode(item["image"]), "label": item["label"]}


def _cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of process ``pid`` (Linux ``/proc``), 0 if unreadable."""
  try:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
  found = []
  for task in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
    try:
      found += [int(c) for c in task.read_text().split()]
    except OSError:
      pass
  return found + [g for c in found for g in _children(c)]


def cpu_seconds() -> float:
  """CPU seconds of this process and its descendants (the worker processes) so far."""
  pid = os.getpid()
  return time.process_time() + sum(_cpu_seconds(child) for child in _children(pid))


def measure(source, config, batch_size: int, batches: int, warmup: int) -> dict[str, Any]:
  """Times ``batches`` training batches after ``warmup`` batches."""
  from experiments import data  # noqa: PLC0415

  load_before = os.getloadavg()[0]
  it = data.train_batches(source, config, global_batch_size=batch_size, seed=0)
  start_up = time.perf_counter()
  for batch in itertools.islice(it, warmup):
    del batch
  start_up = time.perf_counter() - start_up
  cpu, wall = cpu_seconds(), time.perf_counter()
  for batch in itertools.islice(it, batches):
    del batch
  wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
  if hasattr(it, "close"):
    it.close()
  images = batches * batch_size
  return {
    "images": images,
    "wall_s": round(wall, 3),
    "cpu_s": round(cpu, 3),
    "images_per_s": round(images / wall, 1),
    "images_per_cpu_s": round(images / cpu, 1) if cpu > 0 else None,
    "warmup_s": round(start_up, 2),
    "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
  }


def worker_list(text: str) -> list[int]:
  """``--workers``: comma-separated positive integers, as an argparse ``type``."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive integers (e.g. 1,2,4)")
  return values


def estimate_v4(per_core: float, per_core_workers: float) -> dict[str, float]:
  """Cores a TPU v4 host needs to feed NF-ResNet-50 training, at the in-process per-core
  rate and at the rate with worker processes (their transfers included)."""
  needed = V4_IMAGES_PER_CHIP * V4_CHIPS_PER_HOST
  return {
    "assumed_images_per_s_per_chip": V4_IMAGES_PER_CHIP,
    "chips_per_host": V4_CHIPS_PER_HOST,
    "images_per_s_per_host": needed,
    "per_core_images_per_s": per_core,
    "cores_needed": round(needed / per_core, 1),
    "per_core_images_per_s_workers": per_core_workers,
    "cores_needed_workers": round(needed / per_core_workers, 1),
  }


def markdown(payload: dict[str, Any]) -> str:
  """The results table, the per-core goal and the TPU v4 estimate."""
  args = payload["args"]
  lines = [
    f"# Input pipeline on `{payload['machine']}`",
    "",
    f"CPU: {payload['cpu']}, {payload['cpu_count']} cores; load average (1 min) at the start: "
    f"{payload['load_avg_start']} (above {payload['cpu_count']}: the cores were shared with "
    "other jobs, so wall-clock rates are low and images per CPU-second is the per-core rate). "
    f"Command: `{payload['command']}`.",
    "",
    f"{args['images']} JPEGs of about 400 x 350 px (quality 90); Inception crop to "
    f"{args['size']} px ({args['resize_method']}), flip, normalization; batches of "
    f"{args['batch_size']}.",
    "",
    "| path | images | wall images/s | images / CPU-s (per core) | CPU-s / wall-s | load avg |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in payload["results"].items():
    busy = r["cpu_s"] / r["wall_s"] if r["wall_s"] else 0.0
    lines.append(
      f"| {name} | {r['images']} | {r['images_per_s']:.1f} | {r['images_per_cpu_s']} | "
      f"{busy:.2f} | {r['load_avg_1min'][0]} -> {r['load_avg_1min'][1]} |"
    )
  v4 = payload["v4_estimate"]
  lines += [
    "",
    f"Per-core goal (>= {TARGET_PER_CORE:.0f} images/s at 224 px, Pillow path in-process): "
    f"{payload['pillow_per_core']} images per CPU-second: "
    f"{'met' if payload['pillow_per_core'] >= TARGET_PER_CORE else 'not met'}.",
    "",
    "TPU v4 host (estimate, no v4 measurement here): NF-ResNet-50 at an assumed "
    f"{v4['assumed_images_per_s_per_chip']:.0f} images/s per chip x {v4['chips_per_host']} "
    f"chips = {v4['images_per_s_per_host']:.0f} images/s per host; / "
    f"{v4['per_core_images_per_s']} images/s per core = about {v4['cores_needed']:.0f} cores "
    f"of input processing per host; at the rate with worker processes, transfers included "
    f"({v4['per_core_images_per_s_workers']} images per CPU-second), about "
    f"{v4['cores_needed_workers']:.0f} cores (the assumption: see `V4_IMAGES_PER_CHIP` in "
    "`benchmarks/input_pipeline.py`).",
    "",
  ]
  return "\n".join(lines)


def overwrite_error(stem: pathlib.Path, args: dict[str, Any]) -> str | None:
  """Why ``<stem>.json``/``.md`` must not be replaced by this run without ``--force``."""
  payload, why = results_guard.previous(stem, "benchmarks.input_pipeline", "args")
  if payload is not None and payload["args"] != args:
    why = f"{stem}.json holds the results of `{payload.get('command')}`, not of these arguments"
  return why


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  from benchmarks import suite  # noqa: PLC0415 (imports JAX: not in the worker processes)

  parser = cli.UsageParser(prog="python -m benchmarks.input_pipeline", description=__doc__)
  parser.add_argument("--images", type=cli.positive_int, default=1024, help="JPEGs generated")
  parser.add_argument("--size", type=cli.positive_int, default=224, help="output side (px)")
  parser.add_argument("--batch_size", type=cli.positive_int, default=32)
  parser.add_argument("--batches", type=cli.positive_int, default=32, help="timed batches")
  parser.add_argument(
    "--numpy_batches", type=cli.positive_int, default=4, help="timed batches of the numpy path"
  )
  parser.add_argument("--workers", type=worker_list, default=[1, 2, 4], help="e.g. 1,2,4")
  parser.add_argument("--resize_method", choices=("bilinear", "bicubic"), default="bicubic")
  parser.add_argument("--machine", type=suite.file_label, default=None)
  parser.add_argument("--out_dir", default=str(OUT_DIR))
  parser.add_argument("--data_dir", default=None, help="JPEG cache (default: under /tmp)")
  parser.add_argument("--force", action="store_true", help="replace results of other arguments")
  args = parser.parse_args(argv)
  load_start = round(os.getloadavg()[0], 2)
  recorded = {k: v for k, v in vars(args).items() if k not in ("machine", "out_dir", "force")}
  recorded.pop("data_dir")
  machine = args.machine or suite.default_machine()
  out_dir = pathlib.Path(args.out_dir)
  stem = out_dir / f"input_pipeline-{machine}"
  why = None if args.force else overwrite_error(stem, recorded)
  if why:
    return cli.fail(f"{why}; pass --force to replace it")

  from experiments import data  # noqa: PLC0415
  from experiments.data import image_folder, tfds_source  # noqa: PLC0415

  folder = dataset(args.data_dir, args.images)
  source = image_folder.ImageFolderSource(str(folder), "train", *tfds_source.IMAGENET_STATS)
  config = data.default_data_config()
  config.update(
    dict(
      name="image_folder",
      augment="inception",
      image_size=args.size,
      resize_method=args.resize_method,
      worker_threads=0,
    )
  )
  results: dict[str, Any] = {}
  cases = [("numpy in-process", DecodedSource(source), 0, args.numpy_batches)]
  cases += [("pillow in-process", source, 0, args.batches)]
  cases += [(f"pillow, {w} workers", source, w, args.batches) for w in args.workers]
  for name, src, workers, batches in cases:
    config.worker_processes, config.worker_threads = workers, 1 if workers else 0
    results[name] = measure(src, config, args.batch_size, batches, max(workers, 1))
    print(f"{name}: {json.dumps(results[name])}", flush=True)
  per_core = results["pillow in-process"]["images_per_cpu_s"]
  workers_per_core = max(results[f"pillow, {w} workers"]["images_per_cpu_s"] for w in args.workers)
  payload = {
    "machine": machine,
    "cpu": suite.cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_avg_start": load_start,
    "command": shlex.join(["python", "-m", "benchmarks.input_pipeline", *argv]),
    "args": recorded,
    "results": results,
    "pillow_per_core": per_core,
    "v4_estimate": estimate_v4(per_core, workers_per_core),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
  stem.with_name(stem.name + ".md").write_text(markdown(payload))
  print(f"wrote {stem}.md and .json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
