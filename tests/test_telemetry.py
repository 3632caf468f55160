"""Operations fields: profiler trace, step time, MFU, device memory, compilation cache,
``compute_dtype="auto"`` and ``train.num_devices``.

One 3-step smoke run (module fixture) covers the trace, the cache and the logged rows; the
rest are unit checks on ``experiments.telemetry`` and ``experiments.builder`` with fixed
numbers, plus one loss comparison of a 2-device mesh against all 8 fake devices.
"""

import json
import types

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

import nfresnet
from experiments import builder, steps, telemetry
from experiments.configs import ConfigError, quickstart
from experiments.train import train_and_evaluate

NUM_STEPS = 3
SMOKE_IMAGE = (16, 16, 1)  # The smoke config's synthetic images.


def smoke_config(**train):
  config = quickstart.get_config("smoke")
  config.train.update(num_steps=NUM_STEPS, log_every=1, checkpoint_every=0, **train)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Steps 1-3 tracing step 2, with a compilation cache that keeps every program."""
  workdir, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache")
  config = smoke_config(profile_steps="2:3", compilation_cache_dir=str(cache))
  config.train.compute_dtype = "auto"
  min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # Tiny programs too.
  try:
    _, metrics = train_and_evaluate(config, workdir)
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return dict(workdir=workdir, cache=cache, metrics=metrics, rows=[json.loads(x) for x in lines])


def test_profile_trace_of_the_named_steps_is_written(run):
  traces = list((run["workdir"] / telemetry.PROFILE_DIR).rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0  # One trace, stopped once.
  assert run["metrics"]["step"] == NUM_STEPS


def test_trace_stops_when_the_run_ends_inside_the_window(tmp_path):
  """``"2:9"`` of a 3-step run: ``close()`` stops it; the next trace can start."""
  trace_dir = tmp_path / "run"
  experiment = builder.build(smoke_config(profile_steps="2:9"), 10, 64)
  tele = telemetry.Telemetry(experiment.config, trace_dir, experiment, SMOKE_IMAGE)
  for step in range(1, NUM_STEPS + 1):
    tele.step(step)
  assert tele.tracing
  tele.close()
  assert not tele.tracing and list((trace_dir / "profile").rglob("*.xplane.pb"))
  jax.profiler.start_trace(str(tmp_path / "again"))  # Fails if a trace were still running.
  jax.profiler.stop_trace()


def test_compilation_cache_keeps_the_compiled_programs(run):
  entries = [p for p in run["cache"].rglob("*") if p.is_file()]
  assert entries and all(p.stat().st_size > 0 for p in entries)
  assert jax.config.jax_compilation_cache_dir is None  # Restored for the other tests.


def test_logged_rows_carry_step_time_and_no_made_up_mfu_on_cpu(run):
  train_rows = [r for r in run["rows"] if r["kind"] == "train"]
  assert [r["step"] for r in train_rows] == [1, 2, 3]
  for row in train_rows:
    assert row["step_time_s"] > 0
    # The same window: seconds per step times images per second is the batch.
    assert row["step_time_s"] * row["images_per_s"] == pytest.approx(8, rel=1e-9)
    assert not {"mfu", "memory_gib", "peak_memory_gib"} & set(row)  # CPU: no peak, no stats.
  assert run["metrics"]["train/step_time_s"] == train_rows[-1]["step_time_s"]


def test_mfu_is_model_flops_per_second_over_the_peak():
  assert telemetry.model_flops_utilization(6e12, 2.0, 1e12, 4) == pytest.approx(0.75)
  assert telemetry.model_flops_utilization(1e9, 0.5, 2e9, 1) == pytest.approx(1.0)


def test_mfu_field_with_a_peak_override():
  config = smoke_config(peak_flops_per_device=1e9)
  experiment = builder.build(config, 10, 64)
  tele = telemetry.Telemetry(config, "/unused", experiment, SMOKE_IMAGE)
  kwargs = dict(config.model.to_dict(), num_classes=10)
  macs = nfresnet.count_macs(lambda x: nfresnet.NFResNet(**kwargs)(x, False), (1, *SMOKE_IMAGE))
  assert macs > 0 and tele.flops_per_image == 6 * macs
  fields = tele.fields(steps=2, seconds=0.5)
  flops = 6 * macs * config.train.batch_size * 2
  assert fields["step_time_s"] == 0.25
  assert fields["mfu"] == pytest.approx(flops / 0.5 / (1e9 * 8), rel=1e-12)  # 8 devices.


def test_no_peak_no_flop_count():
  experiment = builder.build(smoke_config(), 10, 64)
  tele = telemetry.Telemetry(experiment.config, "/unused", experiment, SMOKE_IMAGE)
  assert tele.peak is None and tele.flops_per_image is None
  assert set(tele.fields(steps=4, seconds=1.0)) == {"step_time_s"}


@pytest.mark.parametrize(
  "kind,dtype,peak",
  [
    ("TPU v2", "bfloat16", 22.5e12),
    ("TPU v3", "float32", 61.5e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("NVIDIA A100-PCIE-40GB", "float32", 156e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5e12),
    ("NVIDIA H100 NVL", "float32", 417.5e12),
    ("NVIDIA H200", "bfloat16", 989.5e12),
    ("NVIDIA H200", "float32", 494.5e12),
    ("cpu", "float32", None),
    ("TPU v4 lite", "bfloat16", None),
  ],
)
def test_peak_table(kind, dtype, peak):
  assert telemetry.peak_flops_per_device(kind, dtype) == peak


class FakeDevice:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_memory_fields_only_where_the_device_keeps_statistics(monkeypatch):
  experiment = builder.build(smoke_config(), 10, 64)
  tele = telemetry.Telemetry(experiment.config, "/unused", experiment, SMOKE_IMAGE)
  monkeypatch.setattr(tele, "device", FakeDevice(None))
  assert set(tele.fields(steps=1, seconds=1.0)) == {"step_time_s"}
  stats = {"bytes_in_use": 3 * 2**29, "peak_bytes_in_use": 5 * 2**30, "num_allocs": 7}
  monkeypatch.setattr(tele, "device", FakeDevice(stats))
  fields = tele.fields(steps=1, seconds=1.0)
  assert (fields["memory_gib"], fields["peak_memory_gib"]) == (1.5, 5.0)
  assert telemetry.memory_fields(FakeDevice({"bytes_in_use": 2**30})) == {"memory_gib": 1.0}


def test_compute_dtype_auto():
  assert jax.default_backend() == "cpu"
  assert builder.resolve_compute_dtype("auto") == "float32"
  assert builder.resolve_compute_dtype("auto", "gpu") == "bfloat16"
  assert builder.resolve_compute_dtype("auto", "tpu") == "bfloat16"
  assert builder.resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"


def test_compute_dtype_auto_is_recorded_as_given(run):
  saved = json.loads((run["workdir"] / "config.json").read_text())
  assert saved["train"]["compute_dtype"] == "auto"


def test_profile_steps_parse():
  assert telemetry.parse_profile_steps("") is None
  assert telemetry.parse_profile_steps("10:20") == (10, 20)
  for bad in ("5:2", "0:3", "3:3", "10", "a:b", "1:2:3"):
    with pytest.raises(ValueError, match="START:END"):
      telemetry.parse_profile_steps(bad)


def train_losses(config, batches) -> list[float]:
  experiment = builder.build(config, 10, 64)
  state = experiment.init_state(SMOKE_IMAGE)
  losses = []
  for batch in batches:
    state, metrics = experiment.train_step(state, experiment.shard_batch(batch))
    losses.append(float(steps.fetch(metrics)["loss"]))
  return experiment.mesh, losses


def test_two_devices_train_with_the_losses_of_all_eight():
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": rng.normal(size=(8, *SMOKE_IMAGE)).astype(np.float32),
      "label": rng.integers(0, 10, size=(8,)).astype(np.int32),
    }
    for _ in range(2)
  ]
  mesh_all, losses_all = train_losses(smoke_config(), batches)
  mesh_two, losses_two = train_losses(smoke_config(num_devices=2), batches)
  assert (mesh_all.size, mesh_two.size) == (8, 2)
  assert list(mesh_two.devices.flat) == jax.devices()[:2]
  np.testing.assert_allclose(losses_two, losses_all, rtol=1e-5)
  assert losses_all[0] != losses_all[1]  # Training moved.


def test_num_devices_checks():
  config = smoke_config(num_devices=3)
  with pytest.raises(ConfigError) as info:
    builder.check_config(config, 8)  # Batch 8 over 3 devices.
  assert str(info.value) == "train.batch_size=8 is not allowed: a multiple of the device count 3"
  config.train.num_devices = 99
  with pytest.raises(ConfigError) as info:
    builder.check_config(config, 8)
  assert str(info.value) == (
    "train.num_devices=99 is not allowed: at most the 8 devices available (0: all of them)"
  )
  config.train.update(num_devices=4, batch_size=4)
  builder.check_config(config, 8)  # One example per device used.
  assert builder.padded_eval_batch_size(config, builder.used_device_count(config, 8)) % 4 == 0


def test_each_process_gives_its_share_of_devices(monkeypatch):
  devices = [types.SimpleNamespace(id=i, process_index=i // 4) for i in range(8)]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  config = smoke_config(num_devices=4)
  assert [d.id for d in builder.mesh_devices(config, devices)] == [0, 1, 4, 5]
  config.train.num_devices = 0
  assert builder.mesh_devices(config, devices) == devices
  config.train.num_devices = 3
  with pytest.raises(ConfigError, match="num_devices=3 is not allowed: a multiple of the process"):
    builder.mesh_devices(config, devices)
