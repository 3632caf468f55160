"""Workdirs: URLs (paths layer, an in-memory gs:// bucket), the one-writer lock, resume checks.

The in-memory bucket is fsspec's memory file system registered for ``gs://``, so the
logger, the lock's lease and the checkpoint manifests run through etils.epath's fsspec
backend as they would on Cloud Storage, offline. One tiny trainer (``tiny``) compiles the
steps; the other runs reuse its programs.
"""

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from experiments import checkpoint_manifest, cli, launch, paths, resume_check, workdir_lock
from experiments.configs import ConfigError, quickstart
from experiments.logger import DONE_FILE, MetricsLogger
from experiments.train import Trainer, TrainingInterrupted

REPO = pathlib.Path(__file__).resolve().parents[1]


class FakeBucket(MemoryFileSystem):
  """An in-memory stand-in for gcsfs: the paths etils.epath gives it, without the scheme."""

  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # An argument etils passes to gcsfs.
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    if isinstance(path, list):
      return [cls._strip_protocol(p) for p in path]
    return path.split("://", 1)[-1].strip("/")


@pytest.fixture
def bucket():
  """``gs://bucket/<unique>`` backed by memory; the registrations are undone afterwards."""
  registry = importlib.import_module("fsspec.registry")  # The module (fsspec.registry: a view).
  saved = {name: registry._registry.get(name) for name in ("gs", "gcs")}
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeBucket, clobber=True)
  FakeBucket.store.clear()
  FakeBucket.pseudo_dirs[:] = [""]
  yield epath.Path(f"gs://bucket/run{time.monotonic_ns()}")
  for name, cls in saved.items():
    if cls is None:
      registry._registry.pop(name, None)
    else:
      fsspec.register_implementation(name, cls, clobber=True)


def tiny_config(num_steps: int = 4):
  config = quickstart.get_config("smoke")
  config.model.width = 0.125
  config.data.image_size = 8
  config.data.synthetic.update(num_train=64, num_test=16, image_size=8, channels=1)
  config.train.update(
    batch_size=16, eval_batch_size=16, num_steps=num_steps, checkpoint_every=2, log_every=1
  )
  return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """An uninterrupted 4-step run: (trainer, its final metrics)."""
  trainer = Trainer(tiny_config(), tmp_path_factory.mktemp("tiny"))
  _, metrics = trainer.run()
  return trainer, metrics


def trainer_like(tiny, workdir, config=None, **kwargs) -> Trainer:
  trainer = Trainer(config or tiny_config(), workdir, **kwargs)
  trainer.train_step, trainer.eval_step = tiny[0].train_step, tiny[0].eval_step
  return trainer


# The paths layer.


def test_as_path_kinds():
  assert paths.as_path("/a/b") == pathlib.Path("/a/b")
  assert paths.as_path("file:///a/b") == pathlib.Path("/a/b")
  assert paths.as_path("rel/dir") == pathlib.Path("rel/dir")
  url = paths.as_path("gs://bucket/x")
  assert isinstance(url, epath.Path) and os.fspath(url) == "gs://bucket/x"
  assert not paths.is_local(url) and paths.is_local(paths.as_path("/a"))


@pytest.mark.parametrize(
  "text, message",
  [
    ("ftp://host/x", "--workdir=ftp://host/x: ftp:// is not supported; one of file://, gs://"),
    ("file://host/x", "--workdir=file://host/x names a host; use file:///absolute/path"),
  ],
)
def test_as_path_refuses_bad_urls(text, message):
  with pytest.raises(ConfigError) as info:
    paths.as_path(text, "--workdir")
  assert str(info.value).startswith(message)


def test_bad_scheme_workdir_is_a_usage_error(capsys):
  assert launch.launch(tiny_config(), "ftp://host/run") == cli.USAGE_ERROR
  assert capsys.readouterr().err.startswith("error: --workdir=ftp://host/run: ftp:// is not")


def test_files_under_and_remove_tree_in_the_bucket(bucket):
  (bucket / "a" / "b").mkdir(parents=True)
  (bucket / "a" / "b" / "x.bin").write_bytes(b"12")
  (bucket / "top.txt").write_text("t")
  assert [name for name, _ in paths.files_under(bucket)] == ["top.txt", "a/b/x.bin"]
  paths.remove_tree(bucket / "a")
  assert [p.name for p in bucket.iterdir()] == ["top.txt"]


def test_manifest_round_trip_in_the_bucket(bucket):
  step = bucket / "7"
  (step / "state").mkdir(parents=True)
  (step / "state" / "data").write_bytes(b"\x00" * 100)
  checkpoint_manifest.write_manifest(step)
  listed = json.loads((step / checkpoint_manifest.MANIFEST_FILE).read_text())["files"]
  assert sorted(listed) == ["state/data"]
  assert checkpoint_manifest.verify_manifest(step) is None
  (step / "state" / "data").write_bytes(b"\x01" * 100)
  reason = checkpoint_manifest.verify_manifest(step)
  assert (
    reason == f"state/data does not match its SHA-256 digest in {checkpoint_manifest.MANIFEST_FILE}"
  )


def test_image_folder_in_the_bucket(bucket):
  """ImageNet-style folders at a URL: classes from train/, the test split from validation/."""
  from experiments.data import image_folder, jpeg

  image = jpeg.encode(np.full((12, 10, 3), 128, np.uint8))
  for split, names in (("train", ("a.JPEG", "b.jpg", "notes.txt")), ("validation", ("c.JPEG",))):
    for label in ("n01", "n02"):
      for name in names:
        (bucket / split / label).mkdir(parents=True, exist_ok=True)
        (bucket / split / label / name).write_bytes(image)
  train = image_folder.ImageFolderSource(os.fspath(bucket), "train", (0.5,) * 3, (0.2,) * 3)
  assert train.classes == ["n01", "n02"] and len(train) == 4  # notes.txt is no image.
  assert train.path(3) == f"{bucket}/train/n02/b.jpg"
  assert train[3]["image"] == image and train[3]["label"] == 1
  test = image_folder.ImageFolderSource(os.fspath(bucket), "test", (0.5,) * 3, (0.2,) * 3)
  assert [test.path(i).rsplit("/", 3)[1:] for i in range(2)] == [
    ["validation", "n01", "c.JPEG"],
    ["validation", "n02", "c.JPEG"],
  ]


def test_logger_writes_rows_config_events_and_done_to_the_bucket(bucket):
  logger = MetricsLogger(bucket, start_step=0, total_steps=4, progress_bar=False)
  logger.write_config(tiny_config())
  for step in (1, 2, 3):
    logger.write(step, {"loss": 1.0 / step})
  logger.write_done(3, {"eval/accuracy": 0.5})
  logger.close()
  rows = [json.loads(line) for line in (bucket / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == pytest.approx(1 / 3)
  assert json.loads((bucket / "config.json").read_text())["train"]["num_steps"] == 4
  assert json.loads((bucket / DONE_FILE).read_text()) == {"step": 3, "eval/accuracy": 0.5}
  events = list((bucket / "tensorboard").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
  assert len(events[0].read_bytes()) > 100  # Three scalars and the file header.

  resumed = MetricsLogger(bucket, start_step=2, total_steps=4, progress_bar=False)
  resumed.write(3, {"loss": 0.25})
  resumed.close()
  rows = [json.loads(line) for line in (bucket / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_file_url_workdir_trains_saves_resumes_and_logs(tiny, tmp_path):
  """A ``file://`` workdir: 2 steps, then the same URL resumed to 4 (a resumable change)."""
  url = f"file://{tmp_path}/run"
  trainer_like(tiny, url, tiny_config(num_steps=2)).run()
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]
  _, metrics = trainer_like(tiny, url).run()
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
  np.testing.assert_allclose(metrics["eval/accuracy"], tiny[1]["eval/accuracy"], rtol=1e-6)
  assert metrics["train/loss"] == pytest.approx(tiny[1]["train/loss"], rel=1e-6)
  assert (tmp_path / "run" / DONE_FILE).is_file()


# The one-writer lock.


def test_a_second_lock_on_a_local_workdir_is_refused(tmp_path):
  first = workdir_lock.WorkdirLock(tmp_path)
  first.acquire()
  first.record_holder()
  with pytest.raises(workdir_lock.WorkdirBusyError) as info:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert f"is in use by process {os.getpid()} on host " in str(info.value)
  first.release()
  again = workdir_lock.WorkdirLock(tmp_path)
  again.acquire()  # Released: free again.
  again.release()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
  a, b = workdir_lock.acquire(tmp_path), workdir_lock.acquire(tmp_path)
  assert a is b and a.count == 2
  a.release()
  a.release()
  assert a.fd is None


HOLD = """
import sys, time
from experiments import workdir_lock
lock = workdir_lock.acquire(__import__("pathlib").Path(sys.argv[1]))
lock.record_holder()
print("held", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_and_a_killed_holder_frees_the_workdir(tiny, tmp_path, capsys):
  workdir = tmp_path / "run"
  trainer_like(tiny, workdir, tiny_config(num_steps=2)).run()
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    assert launch.launch(tiny_config(), str(workdir)) == cli.USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert err == (
      f"error: --workdir={workdir} is in use by process {holder.pid} on host "
      f"{os.uname().nodename} (since {err.split('(since ')[1].split(')')[0]}): one run per "
      "workdir; wait for it to end or use another --workdir"
    )
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before | {workdir / ".lock": after[workdir / ".lock"]}
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  trainer_like(tiny, workdir).run()  # The kernel dropped the dead holder's lock.
  assert (workdir / DONE_FILE).is_file()


def test_lease_in_the_bucket_refuses_then_expires(bucket, monkeypatch):
  first = workdir_lock.WorkdirLock(bucket)
  first.acquire()
  holder = json.loads((bucket / ".lock").read_text())
  assert holder["pid"] == os.getpid()
  with pytest.raises(workdir_lock.WorkdirBusyError, match="is in use by process"):
    workdir_lock.WorkdirLock(bucket).acquire()
  record = dict(holder, host="another-host", time=time.time() - workdir_lock.LEASE_STALE_S - 1)
  (bucket / ".lock").write_text(json.dumps(record))  # Not renewed for too long: stale.
  taken = workdir_lock.WorkdirLock(bucket)
  taken.acquire()
  taken.release()
  assert not (bucket / ".lock").exists()


# Resuming under a changed config.


def test_changed_fields_lists_what_differs_and_skips_resumable_ones():
  saved = resume_check.as_json(tiny_config())
  config = tiny_config(num_steps=9)  # Resumable.
  config.optimizer.base_lr = 0.2
  config.train.seed = 3
  assert resume_check.changed_fields(saved, config) == [
    "optimizer.base_lr: 0.4 -> 0.2",
    "train.seed: 0 -> 3",
  ]
  del saved["train"]["grad_accum_steps"]  # A run older than the field: its default is fine.
  assert resume_check.changed_fields(saved, tiny_config()) == []


def test_changed_config_is_refused_unless_allowed(tiny, tmp_path):
  workdir = tmp_path / "run"
  trainer_like(tiny, workdir, tiny_config(num_steps=2)).run()
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  changed = tiny_config()
  changed.optimizer.base_lr = 0.2
  with pytest.raises(ConfigError) as info:
    Trainer(changed, workdir)
  assert str(info.value) == (
    f"--workdir={workdir} holds a run with another config (optimizer.base_lr: 0.4 -> 0.2): "
    "rerun with its values, use another --workdir, or pass --allow_config_changes to resume "
    "under the new ones"
  )
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
  trainer = trainer_like(tiny, workdir, changed, allow_config_changes=True)
  assert trainer.config_changes == ["optimizer.base_lr: 0.4 -> 0.2"]
  trainer.run()
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["base_lr"] == 0.2


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint(tiny, tmp_path):
  workdir = tmp_path / "run"
  trainer = trainer_like(tiny, workdir)
  calls = []

  def step_then_ctrl_c(state, batch):
    calls.append(1)
    if len(calls) == 3:
      os.kill(os.getpid(), signal.SIGINT)  # What Ctrl-C sends; the loop only sets a flag.
    return tiny[0].train_step(state, batch)

  trainer.train_step = step_then_ctrl_c
  with pytest.raises(TrainingInterrupted) as info:
    trainer.run()
  assert (info.value.signal, info.value.step) == ("SIGINT", 3)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]
  _, metrics = trainer_like(tiny, workdir).run()
  assert metrics["train/loss"] == pytest.approx(tiny[1]["train/loss"], rel=1e-6)
