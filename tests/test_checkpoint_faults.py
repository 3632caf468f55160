"""Checkpoint faults: corrupt files, checksums, unreadable metadata, analysis tools, failed saves.

A tiny TrainState (no model, nothing compiled) is saved once per module at
steps 1, 2 and 3; each test works on its own copy of that workdir.
"""

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import checkpoint, checkpoint_manifest, orbax_errors
from experiments.spp import cli as spp
from experiments.train_state import TrainState

IDENTITY = {"model_name": "nf_resnet", "model": {"depth": 18, "num_classes": 10, "width": 0.125}}
NUM_LEAVES = 48  # Enough parallel reads that a failed restore leaves many in flight.
REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_state(step: int) -> TrainState:
  rng = np.random.default_rng(step)
  params = {
    f"layer_{i}": {"w": jnp.asarray(rng.standard_normal((32, 32), np.float32))}
    for i in range(NUM_LEAVES)
  }
  return TrainState(
    step=jnp.asarray(step, jnp.int32),
    params=params,
    model_state={},
    opt_state=(),
    ema_params=None,
    rng=jnp.zeros(2, jnp.uint32),
  )


def abstract_state():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tiny_state(0)
  )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A workdir with checkpoints 1, 2, 3 (with manifests) and a config."""
  workdir = tmp_path_factory.mktemp("template")
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY, keep=5)
  for step in (1, 2, 3):
    ckpt.save(tiny_state(step))
  ckpt.close()
  config = {"model_name": "nf_resnet", "model": IDENTITY["model"], "data": {}}
  (workdir / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
  return workdir


@pytest.fixture
def workdir(template, tmp_path):
  path = tmp_path / "run"
  shutil.copytree(template, path)
  return path


def step_dir(workdir, step) -> pathlib.Path:
  return workdir / checkpoint.CHECKPOINT_DIR / str(step)


def data_files(workdir, step) -> list[pathlib.Path]:
  return sorted(p for p in (step_dir(workdir, step) / "state").rglob("d/*") if p.is_file())


def drop_manifests(workdir):
  for path in (workdir / checkpoint.CHECKPOINT_DIR).glob(f"*/{checkpoint_manifest.MANIFEST_FILE}"):
    path.unlink()


def snapshot(workdir) -> dict:
  return {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture
def unraisable(monkeypatch) -> list[str]:
  """Errors reported through ``sys.unraisablehook`` (TensorStore's failed callbacks)."""
  seen = []
  monkeypatch.setattr(
    sys, "unraisablehook", lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}")
  )
  return seen


def captured_lines(caplog, capfd, unraisable=()) -> list[str]:
  """Log records, stdout, stderr and unraisable errors, one entry per line."""
  out, err = capfd.readouterr()
  text = "\n".join([caplog.text, out, err, *unraisable])
  return [line for line in text.splitlines() if line.strip()]


def restore_step(ckpt) -> int:
  return checkpoint.steps_of(ckpt.restore_latest(abstract_state()))


def test_manifest_lists_every_file_and_orbax_ignores_it(workdir):
  folder = step_dir(workdir, 3)
  manifest = json.loads((folder / checkpoint_manifest.MANIFEST_FILE).read_text())
  files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
  assert set(manifest["files"]) == files - {checkpoint_manifest.MANIFEST_FILE}
  assert "meta/metadata" in manifest["files"] and len(manifest["files"]) > 5
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
  assert ckpt.steps() == [1, 2, 3]
  assert restore_step(ckpt) == 3


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no_manifest"])
def test_corrupt_newest_falls_back_with_one_line(workdir, manifest, caplog, capfd, unraisable):
  """Garbage in the newest checkpoint's data files: one warning, no asyncio tracebacks."""
  if not manifest:
    drop_manifests(workdir)  # Orbax and TensorStore read the garbage themselves.
  rng = np.random.default_rng(0)
  for path in data_files(workdir, 3):
    path.write_bytes(rng.integers(0, 256, path.stat().st_size, np.uint8).tobytes())
  capfd.readouterr()
  with caplog.at_level(logging.WARNING):
    ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
    ckpt.check_identity()
    assert restore_step(ckpt) == 2
  time.sleep(0.2)  # Reads still in flight when orbax gave up report late.
  lines = captured_lines(caplog, capfd, unraisable)
  assert len(lines) < 5, lines
  assert not any("Event loop is closed" in line or "Traceback" in line for line in lines)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  assert str(step_dir(workdir, 3)) in warnings[0] and "\n" not in warnings[0]
  assert len(warnings[0]) < 400
  if manifest:
    assert "does not match its SHA-256 digest" in warnings[0]
  # Set aside, not deleted: the resumed run can save step 3 again.
  assert ckpt.steps() == [1, 2]
  (moved,) = (workdir / checkpoint.UNREADABLE_DIR).iterdir()
  assert moved.name.startswith("3-") and (moved / "state").is_dir()


@pytest.mark.parametrize("fault", ["flip", "delete"])
def test_checksum_mismatch_names_the_file(workdir, fault, caplog):
  target = data_files(workdir, 3)[0]
  name = target.relative_to(step_dir(workdir, 3)).as_posix()
  if fault == "flip":
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
  else:
    target.unlink()
  with caplog.at_level(logging.WARNING):
    assert restore_step(checkpoint.Checkpointer(workdir, IDENTITY)) == 2
  (message,) = [r.getMessage() for r in caplog.records]
  expected = "does not match its SHA-256 digest" if fault == "flip" else "is missing"
  assert f"{step_dir(workdir, 3)}: {name} {expected}" in message, message


def test_checkpoint_without_manifest_restores_silently(workdir, caplog):
  drop_manifests(workdir)
  with caplog.at_level(logging.WARNING):
    ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
    ckpt.check_identity()
    state = ckpt.restore_latest(abstract_state())
  assert checkpoint.steps_of(state) == 3 and not caplog.records
  np.testing.assert_array_equal(
    np.asarray(state.params["layer_0"]["w"]), tiny_state(3).params["layer_0"]["w"]
  )


def test_unreadable_meta_is_an_unreadable_checkpoint(workdir, caplog):
  """Garbage metadata (no manifest to catch it): skipped once, never restored, set aside."""
  drop_manifests(workdir)
  (step_dir(workdir, 3) / "meta" / "metadata").write_text("{not json")
  with caplog.at_level(logging.WARNING):
    ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
    ckpt.check_identity()
    assert restore_step(ckpt) == 2
  (message,) = [r.getMessage() for r in caplog.records]  # Warned once, not per call.
  assert f"checkpoint 3 is unreadable, trying the previous one: {step_dir(workdir, 3)}" in message
  assert [p.name.split("-")[0] for p in (workdir / checkpoint.UNREADABLE_DIR).iterdir()] == ["3"]


def test_identity_is_checked_on_the_checkpoint_restored(workdir):
  """Newest metadata unreadable, the previous checkpoint another model: refused, untouched."""
  drop_manifests(workdir)
  (step_dir(workdir, 3) / "meta" / "metadata").write_text("")
  other = dict(IDENTITY, model={"depth": 50})
  (step_dir(workdir, 2) / "meta" / "metadata").write_text(json.dumps(dict(other, step=2)))
  before = snapshot(workdir)
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="depth=50"):
    ckpt.check_identity()
  with pytest.raises(checkpoint.CheckpointMismatchError, match="depth=50"):
    ckpt.restore_latest(abstract_state())
  assert snapshot(workdir) == before


def test_all_unreadable_refuses_to_resume(workdir):
  for step in (1, 2, 3):
    (step_dir(workdir, step) / "meta" / "metadata").write_text("[]")
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"steps \[1, 2, 3\].*newest"):
    checkpoint.Checkpointer(workdir, IDENTITY).restore_latest(abstract_state())
  assert not (workdir / checkpoint.UNREADABLE_DIR).exists()


def test_load_trained_skips_a_corrupt_checkpoint(workdir, caplog):
  data_files(workdir, 3)[0].write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    trained = checkpoint.load_trained(workdir)
  np.testing.assert_array_equal(
    trained.params["layer_0"]["w"], tiny_state(2).params["layer_0"]["w"]
  )
  (message,) = [r.getMessage() for r in caplog.records]
  assert message.startswith("checkpoint 3 is unreadable, skipped: ") and "SHA-256" in message
  assert step_dir(workdir, 3).is_dir()  # Analysis tools leave the workdir as it is.


@pytest.fixture
def corrupt_only(workdir):
  """A workdir whose only checkpoint (3) has a changed data file."""
  for step in (1, 2):
    shutil.rmtree(step_dir(workdir, step))
  data = bytearray(data_files(workdir, 3)[0].read_bytes())
  data[0] ^= 0xFF
  data_files(workdir, 3)[0].write_bytes(bytes(data))
  return workdir


def test_load_trained_without_a_readable_checkpoint(corrupt_only):
  with pytest.raises(checkpoint.CheckpointReadError, match="no readable checkpoint") as info:
    checkpoint.load_trained(corrupt_only)
  message = str(info.value)
  assert str(corrupt_only) in message and "SHA-256" in message and "\n" not in message
  assert isinstance(info.value, FileNotFoundError)


def test_spp_cli_reports_a_corrupt_checkpoint_in_one_line(corrupt_only, tmp_path, capfd):
  capfd.readouterr()
  assert spp.main([f"--checkpoint={corrupt_only}", f"--out={tmp_path / 'spp'}"]) == 2
  out, err = capfd.readouterr()
  lines = (out + err).strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"error: --checkpoint={corrupt_only}: no readable checkpoint in ")
  assert "does not match its SHA-256 digest" in lines[0]
  assert not (tmp_path / "spp").exists()


def no_partial_folders(workdir) -> bool:
  names = [p.name for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir()]
  return not any(checkpoint.TMP_DIR_SUFFIX in name for name in names)


def test_failed_save_raises_one_line_oserror_and_cleans_up(
  workdir, monkeypatch, caplog, capfd, unraisable
):
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY, keep=5)

  async def disk_full(self, item, directory):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
  capfd.readouterr()
  with caplog.at_level(logging.WARNING), pytest.raises(checkpoint.CheckpointWriteError) as info:
    ckpt.save(tiny_state(4))
  error = info.value
  assert isinstance(error, OSError) and error.errno == errno.ENOSPC
  directory = workdir / checkpoint.CHECKPOINT_DIR
  assert str(error) == f"cannot save checkpoint 4 to {directory}: No space left on device"
  assert len(captured_lines(caplog, capfd, unraisable)) < 3
  assert no_partial_folders(workdir) and not step_dir(workdir, 4).exists()
  assert ckpt.steps() == [1, 2, 3]
  assert restore_step(checkpoint.Checkpointer(workdir, IDENTITY)) == 3
  monkeypatch.undo()  # The disk has room again: the same Checkpointer saves.
  ckpt.save(tiny_state(4))
  assert ckpt.steps() == [1, 2, 3, 4]
  assert checkpoint_manifest.verify_manifest(step_dir(workdir, 4)) is None


def test_failed_manifest_write_removes_the_step(workdir, monkeypatch):
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY, keep=5)

  def no_space(step_dir):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpoint, "write_manifest", no_space)
  with pytest.raises(checkpoint.CheckpointWriteError, match="checkpoint 4 .*No space left"):
    ckpt.save(tiny_state(4))
  assert not step_dir(workdir, 4).exists() and ckpt.steps() == [1, 2, 3]


FILE_TOO_LARGE = textwrap.dedent(
  """
  import errno, json, resource, signal, sys
  sys.path.insert(0, sys.argv[2])
  from tests.test_checkpoint_faults import IDENTITY, tiny_state
  from experiments import checkpoint

  ckpt = checkpoint.Checkpointer(sys.argv[1], IDENTITY, keep=5)
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead.
  resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
  try:
    ckpt.save(tiny_state(4))
  except checkpoint.CheckpointWriteError as error:
    result = {"errno": error.errno, "message": str(error), "oserror": isinstance(error, OSError)}
    print(json.dumps(result))
  """
)


def test_file_too_large_in_tensorstore_is_a_write_error(workdir):
  """A real TensorStore write failure (RLIMIT_FSIZE), wrapped by orbax in a ValueError."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
    [sys.executable, "-c", FILE_TOO_LARGE, str(workdir), str(REPO)],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    check=False,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  directory = workdir / checkpoint.CHECKPOINT_DIR
  assert result == {
    "errno": errno.EFBIG,
    "message": f"cannot save checkpoint 4 to {directory}: File too large",
    "oserror": True,
  }
  assert "Event loop is closed" not in proc.stderr and len(proc.stderr.splitlines()) < 5
  assert no_partial_folders(workdir) and not step_dir(workdir, 4).exists()
  assert restore_step(checkpoint.Checkpointer(workdir, IDENTITY)) == 3


def test_new_checkpointer_removes_leftover_tmp_folders(workdir):
  leftover = workdir / checkpoint.CHECKPOINT_DIR / f"4{checkpoint.TMP_DIR_SUFFIX}"
  (leftover / f"state{checkpoint.TMP_DIR_SUFFIX}").mkdir(parents=True)
  (leftover / f"state{checkpoint.TMP_DIR_SUFFIX}" / "partial").write_bytes(b"x" * 10)
  ckpt = checkpoint.Checkpointer(workdir, IDENTITY)
  assert not leftover.exists() and ckpt.steps() == [1, 2, 3]
  assert restore_step(ckpt) == 3


def test_write_error_cause_reads_the_chain():
  wrapped = ValueError("RESOURCE_EXHAUSTED: Failed writing: x: No space [os_error_code='28']")
  assert orbax_errors.write_error_cause(wrapped) == (errno.ENOSPC, os.strerror(errno.ENOSPC))
  try:
    try:
      raise PermissionError(errno.EACCES, "Permission denied", "/x")
    except OSError as error:
      raise RuntimeError("commit failed") from error
  except RuntimeError as outer:
    assert orbax_errors.write_error_cause(outer) == (errno.EACCES, "Permission denied")
  assert orbax_errors.write_error_cause(TypeError("not a pytree")) is None


def test_short_reason_is_one_bounded_line():
  spec = "{" + "x" * 500 + "}"
  error = ValueError(
    'DATA_LOSS: Error opening "cast" driver: Error opening "zarr" driver: Error reading '
    f'"w/.zarray" in OCDBT database at local file "/{"d" * 150}/": Error decoding b-tree '
    f"node: bad magic; at byte 4 [tensorstore_spec='{spec}']\nsecond line"
  )
  reason = orbax_errors.short_reason(error)
  assert len(reason) <= orbax_errors.MAX_REASON_CHARS and "\n" not in reason
  assert reason.startswith("DATA_LOSS: ") and reason.endswith("bad magic; at byte 4")
  assert orbax_errors.short_reason(KeyError("meta")) == "KeyError: 'meta'"


def orbax_record(message: str) -> logging.LogRecord:
  """A record as orbax's code logs it through absl."""
  path = os.path.join(os.path.dirname(ocp.__file__), "checkpoint_manager.py")
  return logging.LogRecord("absl", logging.ERROR, path, 1, message, None, None)


def test_quiet_orbax_holds_back_only_orbax_records(caplog):
  with caplog.at_level(logging.INFO):
    with pytest.raises(ValueError), orbax_errors.quiet_orbax():
      logging.getLogger("absl").handle(orbax_record("dropped with the failure"))
      logging.getLogger("experiments.data").warning("other code is not silenced")
      raise ValueError("a failed read")
    assert [r.getMessage() for r in caplog.records] == ["other code is not silenced"]
    caplog.clear()
    with orbax_errors.quiet_orbax():
      logging.getLogger("absl").handle(orbax_record("shown after a success"))
      assert not caplog.records
    assert [r.getMessage() for r in caplog.records] == ["shown after a success"]
