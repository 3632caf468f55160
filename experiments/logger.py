"""Run outputs: ``metrics.jsonl``, TensorBoard events, ``config.json``, parameter table, progress.

Only process 0 writes; on other processes every method is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import ml_collections
import numpy as np

from experiments import paths
from experiments.paths import atomic_write

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
DONE_FILE = "done.json"
"""The completion marker: written only after the final checkpoint is saved."""


def parameter_table(params: hk.Params) -> str:
  """One row per parameter: module path, name, shape, count; then the total."""
  rows = [
    (module, name, str(tuple(value.shape)), int(np.prod(value.shape)))
    for module, name, value in hk.data_structures.traverse(params)
  ]
  width = max([len(f"{m}/{n}") for m, n, _, _ in rows] + [9])
  lines = [f"{'parameter':<{width}}  {'shape':<18} {'count':>10}"]
  lines += [f"{m + '/' + n:<{width}}  {s:<18} {c:>10,}" for m, n, s, c in rows]
  lines.append(f"{'total':<{width}}  {'':<18} {sum(r[3] for r in rows):>10,}")
  return "\n".join(lines)


def to_python(value: Any) -> Any:
  """Host scalars/arrays -> JSON-friendly Python numbers (non-finite as strings)."""
  value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricsLogger:
  """Writes metric rows to ``metrics.jsonl`` and TensorBoard; shows a progress bar.

  A local ``metrics.jsonl`` is appended to; on an object store (``gs://``...), which
  cannot append, each write replaces the object with all rows so far. TensorBoard event
  files on object stores are written the same way (``register_tensorboard_writer``).

  Args:
    workdir: experiment directory (created if missing): a local path or a URL.
    start_step: first step of this run; rows of later steps left by an
      interrupted run are dropped so the log matches the resumed run.
    total_steps: length of the run, for the progress bar.
    progress_bar: show a tqdm bar on stderr.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    start_step: int,
    total_steps: int,
    progress_bar: bool = True,
  ):
    self.active = jax.process_index() == 0
    self.workdir = paths.as_path(workdir, "--workdir")
    self.writer = None
    self.rows: list[str] | None = None  # All rows, when the file is rewritten (object stores).
    self.bar = None
    self.bar_range: tuple[int, int] | None = None
    if not self.active:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.metrics_path = self.workdir / METRICS_FILE
    kept = truncate_after(self.metrics_path, start_step)
    if not paths.is_local(self.workdir):
      self.rows = kept
      register_tensorboard_writer(paths.scheme_of(self.workdir))
    from tensorboardX import SummaryWriter  # Deferred: slow import.

    self.writer = SummaryWriter(os.fspath(self.workdir / "tensorboard"), purge_step=start_step + 1)
    self.bar_range = (start_step, total_steps) if progress_bar else None

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    if self.active:
      atomic_write(self.workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + "\n")

  def clear_done(self) -> None:
    """Removes the completion marker of an earlier, shorter run (the run goes on)."""
    if self.active:
      (self.workdir / DONE_FILE).unlink(missing_ok=True)

  def write_done(self, step: int, final: Mapping[str, Any]) -> None:
    """Writes ``done.json`` (the step and the final metrics): the run is complete."""
    if self.active:
      record = {"step": int(step), **{k: to_python(v) for k, v in final.items()}}
      atomic_write(self.workdir / DONE_FILE, json.dumps(record, indent=2) + "\n")

  def print_params(self, params: hk.Params) -> None:
    if self.active:
      print(parameter_table(params), flush=True)

  def note(self, text: str) -> None:
    if self.active:
      print(text, flush=True)

  def write(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> None:
    """Appends one row ``{"step", "kind", **metrics}`` and its TensorBoard scalars."""
    if not self.active:
      return
    row = {"step": int(step), "kind": kind, **{k: to_python(v) for k, v in metrics.items()}}
    line = json.dumps(row) + "\n"
    if self.rows is None:
      with self.metrics_path.open("a") as f:
        f.write(line)
    else:
      self.rows.append(line)
      self.metrics_path.write_text("".join(self.rows))
    for name, value in row.items():
      if name not in ("step", "kind") and isinstance(value, (int, float)):
        self.writer.add_scalar(f"{kind}/{name}", value, step)
    self.writer.flush()

  def progress(self, step: int, loss: float | None = None, images_per_s: float | None = None):
    """Moves the bar to ``step`` and shows the latest loss and throughput."""
    if self.bar_range is None:
      return
    if self.bar is None:  # Created on first use, after the parameter table is printed.
      from tqdm import tqdm

      start, total = self.bar_range
      self.bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr)
    self.bar.update(step - self.bar.n)
    if loss is not None:
      self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s or 0:.0f}", refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()


class ObjectRecordWriter:
  """A TensorBoard event file on an object store: buffered, the whole object rewritten on flush."""

  def __init__(self, url: str):
    self.path = paths.as_path(url)
    self.buffer = bytearray()
    self.written = 0

  def write(self, data: bytes) -> None:
    self.buffer += data

  def flush(self) -> None:
    if len(self.buffer) != self.written:
      self.path.write_bytes(bytes(self.buffer))
      self.written = len(self.buffer)

  def close(self) -> None:
    self.flush()


class ObjectRecordWriterFactory:
  """tensorboardX's writer factory interface, over ``paths.as_path`` (etils.epath)."""

  def open(self, url: str) -> ObjectRecordWriter:
    return ObjectRecordWriter(url)

  def directory_check(self, url: str) -> None:
    paths.as_path(url).mkdir(parents=True, exist_ok=True)


def register_tensorboard_writer(scheme: str) -> None:
  """Makes tensorboardX write event files of ``scheme`` URLs (``"gs://"``) through etils.epath.

  tensorboardX's own ``gs://`` and ``s3://`` writers need the google-cloud-storage or
  boto3 client; this one uses the same storage layer as the rest of the run.
  """
  from tensorboardX import record_writer

  record_writer.register_writer_factory(scheme.removesuffix("://"), ObjectRecordWriterFactory())


def truncate_after(path: paths.Path, step: int) -> list[str]:
  """Drops rows of ``path`` whose step is greater than ``step`` (atomically); the rows kept."""
  if not path.is_file():
    return []
  kept = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # A partial line written when the process was killed.
  rows = [line + "\n" for line in kept]
  atomic_write(path, "".join(rows))
  return rows
