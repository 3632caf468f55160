"""What a run reports about the machine: a profiler trace, step time, MFU, device memory.

``Telemetry`` is created by the trainer once the experiment is built. ``step(step, state)``
runs before every training step is dispatched and starts or stops a ``jax.profiler``
trace of the steps ``train.profile_steps`` names (``"10:20"``: steps 10 to 19, written by
process 0 to ``<workdir>/profile``, the folder TensorBoard's profile plugin reads);
``close()`` stops a trace the run did not reach the end of (the run was shorter, stopped or
failed). ``fields(steps, seconds)`` adds to every logged training row:

- ``step_time_s``: seconds per step over the same window as ``images_per_s``;
- ``mfu``: model FLOPs utilization (PaLM, Chowdhery et al. 2022, Appendix B), the model's
  training FLOP/s over the peak of the devices used. The model FLOPs are
  ``3 * 2 * nfresnet.count_macs`` per image (forward and backward; rematerialized
  recomputation is not counted), traced once at start-up; the peak is
  ``train.peak_flops_per_device`` or, when that is 0, ``PEAK_FLOPS`` for the device kind. A
  device kind the table does not know (a CPU) gives no ``mfu`` rather than a made-up one,
  and the model is then not traced at all;
- ``memory_gib`` and ``peak_memory_gib``: bytes in use now and at most so far on this
  process's first device of the mesh (``Device.memory_stats``), where the backend keeps
  them (GPUs and TPUs, not CPUs).

``enable_compilation_cache(config)`` turns on JAX's persistent compilation cache at
``train.compilation_cache_dir`` before anything is compiled.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache

import nfresnet
from experiments import builder, models

PROFILE_DIR = "profile"
TRAIN_FLOPS_PER_MAC = 6
"""2 FLOPs per multiply-accumulate, times 3 for a training step (the forward pass, and a
backward pass costing two: gradients of the activations and of the weights)."""
GIB = float(2**30)

PEAK_FLOPS: Sequence[tuple[str, float, float]] = (
  # (device_kind pattern, bfloat16, float32) dense FLOP/s per JAX device. TPU: the Cloud
  # TPU system-architecture pages (per chip; v2 and v3 have two TensorCores per chip, each a
  # JAX device); a float32 matmul at JAX's default precision runs as one bfloat16 pass on
  # TPU, so both columns are the bf16 peak. NVIDIA: half the datasheet's with-sparsity
  # figures; float32 runs on TF32 tensor cores at the default precision
  # (https://docs.jax.dev/en/latest/201/precision.html), so that column is TF32.
  (r"TPU v2", 22.5e12, 22.5e12),
  (r"TPU v3", 61.5e12, 61.5e12),
  (r"TPU v4", 275e12, 275e12),
  (r"TPU v5 ?(lite|e)", 197e12, 197e12),
  (r"TPU v5p?", 459e12, 459e12),
  (r"TPU v6 ?(lite|e)", 918e12, 918e12),
  (r"NVIDIA A100.*", 312e12, 156e12),
  (r"NVIDIA H100.*PCIe.*", 756.5e12, 378e12),
  (r"NVIDIA H[12]00.*NVL.*", 835.5e12, 417.5e12),
  (r"NVIDIA H[12]00.*", 989.5e12, 494.5e12),  # SXM.
)
"""Peak FLOP/s per device by ``jax.devices()[0].device_kind`` (first full match, any case)."""

TIMING_FIELDS = ("images_per_s", "step_time_s", "mfu", "memory_gib", "peak_memory_gib")
"""Row fields measured rather than computed: two runs of one config differ in them."""


def parse_profile_steps(text: str) -> tuple[int, int] | None:
  """``"10:20"`` -> ``(10, 20)``, the steps 10 to 19 to trace; ``""`` -> None (off).

  Raises:
    ValueError: ``text`` is not ``START:END`` with integers ``1 <= START < END``.
  """
  if not text:
    return None
  allowed = "'START:END' with integers 1 <= START < END, e.g. '10:20' (steps 10 to 19)"
  try:
    start, end = (int(part) for part in text.split(":"))
  except ValueError:
    raise ValueError(allowed) from None
  if not 1 <= start < end:
    raise ValueError(allowed)
  return start, end


def peak_flops_per_device(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one ``device_kind`` device in ``dtype``; None when unknown."""
  for pattern, bfloat16, float32 in PEAK_FLOPS:
    if re.fullmatch(pattern, device_kind, re.IGNORECASE):
      return bfloat16 if dtype == "bfloat16" else float32
  return None


def train_flops_per_image(
  config: ml_collections.ConfigDict, num_classes: int, image_shape: Sequence[int]
) -> float:
  """Model FLOPs of one training step per image: ``6 * count_macs`` at ``image_shape``.

  Counted on the unrolled model without rematerialization (the same arithmetic), whose
  layers ``count_macs`` sees one by one; the trace is abstract, nothing is computed.
  """
  kwargs = models.model_kwargs(config, num_classes)
  for key in ("stack_blocks", "remat"):
    if key in kwargs:
      kwargs[key] = False
  model_fn = models.make_model_fn(config.model_name, kwargs)
  macs = nfresnet.count_macs(lambda x: model_fn(x, False), (1, *image_shape))
  return float(TRAIN_FLOPS_PER_MAC * macs)


def model_flops_utilization(
  flops: float, seconds: float, peak_per_device: float, device_count: int
) -> float:
  """Achieved model FLOP/s (``flops`` in ``seconds``) over the peak of ``device_count`` devices."""
  return flops / seconds / (peak_per_device * device_count)


def memory_fields(device: Any) -> dict[str, float]:
  """``memory_gib`` and ``peak_memory_gib`` of ``device``; empty where it keeps no statistics."""
  stats: Mapping[str, int] | None = device.memory_stats()
  if not stats:
    return {}
  names = {"bytes_in_use": "memory_gib", "peak_bytes_in_use": "peak_memory_gib"}
  return {name: stats[key] / GIB for key, name in names.items() if key in stats}


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Turns on JAX's persistent compilation cache in ``train.compilation_cache_dir`` ('': off).

  JAX's thresholds stay as they are: programs that compile in under
  ``jax_persistent_cache_min_compile_time_secs`` (1 s) are not written. A rerun, or another
  run of the same program, then loads its executables instead of compiling them
  (https://docs.jax.dev/en/latest/persistent_compilation_cache.html). Call it before
  anything is compiled; a different folder than the current one starts a fresh cache.
  """
  path = config.train.get("compilation_cache_dir", "")
  if not path or jax.config.jax_compilation_cache_dir == path:
    return
  compilation_cache.reset_cache()  # The cache opens its folder once, at the first compile.
  compilation_cache.set_cache_dir(path)


class Telemetry:
  """The profiler window and the performance fields of the trainer's logged rows.

  Args:
    config: the experiment config (``train.profile_steps``, ``peak_flops_per_device``,
      ``compute_dtype``, ``batch_size``).
    workdir: the run's folder (a path or a URL); the trace goes to ``<workdir>/profile``.
    experiment: the built experiment (its mesh and number of classes).
    image_shape: the training input (H, W, C), for the FLOP count.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    experiment: builder.Experiment,
    image_shape: Sequence[int],
  ):
    train = config.train
    self.window = parse_profile_steps(train.get("profile_steps", ""))
    self.trace_dir = os.path.join(os.fspath(workdir), PROFILE_DIR)  # A gs:// URL too.
    self.tracing = False
    self.traced = False
    self.device = experiment.mesh.local_devices[0]
    self.device_count = experiment.mesh.size
    self.batch_size = train.batch_size
    dtype = builder.resolve_compute_dtype(train.compute_dtype, self.device.platform)
    self.peak = train.get("peak_flops_per_device", 0.0) or peak_flops_per_device(
      self.device.device_kind, dtype
    )
    self.flops_per_image = None
    if self.peak:  # Traced only when there is a peak to divide by.
      try:
        self.flops_per_image = train_flops_per_image(config, experiment.num_classes, image_shape)
      except Exception as error:  # A model count_macs cannot trace: no MFU, the run goes on.
        warnings.warn(f"mfu is not logged: the FLOP count failed: {error}", stacklevel=2)

  def step(self, step: int, state: Any = None) -> None:
    """Starts or stops the trace before ``step`` is dispatched (process 0 only).

    ``state``, the previous step's output, is waited for first, so the trace holds whole
    steps. A resumed run traces the rest of the window.
    """
    if self.window is None or jax.process_index() != 0:
      return
    start, end = self.window
    if not (self.tracing or self.traced) and start <= step < end:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.trace_dir)
      self.tracing = True
    elif self.tracing and step >= end:
      jax.block_until_ready(state)
      self.tracing, self.traced = False, True
      jax.profiler.stop_trace()

  def close(self) -> None:
    """Stops a trace still running; a failure to write it is a warning, never an error."""
    if not self.tracing:
      return
    self.tracing, self.traced = False, True
    try:
      jax.profiler.stop_trace()
    except Exception as error:  # The run's own outcome (or exception) matters more.
      warnings.warn(f"the profile in {self.trace_dir} was not written: {error}", stacklevel=2)

  def fields(self, steps: int, seconds: float) -> dict[str, float]:
    """``step_time_s``, ``mfu`` and memory for a row: ``steps`` steps took ``seconds``."""
    out: dict[str, float] = {}
    if steps > 0:
      out["step_time_s"] = seconds / steps
      if self.flops_per_image:
        flops = self.flops_per_image * self.batch_size * steps
        out["mfu"] = model_flops_utilization(flops, seconds, self.peak, self.device_count)
    out.update(memory_fields(self.device))
    return out
