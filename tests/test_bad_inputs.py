"""Bad input to every command line: exit status 2, one ``error:`` line naming it, no damage.

The config table runs ``experiments.launch.launch`` in-process (the function the command
line calls after parsing flags), so each case costs milliseconds: every value is refused
by ``experiments.schema`` before data is read or the workdir is created. A few cases
run the real command lines as subprocesses, to prove the whole path (flag parsing, exit
status, stderr). The other command lines (SPP, sweep, report, tune, predict) are called
through their ``main(argv)``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from experiments import launch as launcher
from experiments.configs import imagenet, quickstart

REPO = pathlib.Path(__file__).resolve().parents[1]

# (field, bad value, fragment of what is allowed); the quick-start config otherwise.
CONFIG_CASES = [
  ("model.depth", 19, "one of 18, 26, 34, 50"),
  ("model.stem", "foo", "one of imagenet, imagenet_no_pool, cifar"),
  ("model.width", -1.0, "a number > 0"),
  ("model.width", 0.0, "a number > 0"),
  ("model.alpha", 0.0, "a number > 0"),
  ("model.activation", "foo", "one of celu"),
  ("model.dropout_rate", 1.5, "a number in [0, 1)"),
  ("model.stochdepth_rate", -0.1, "a number in [0, 1)"),
  ("model.skip_gain_init", float("nan"), "a number"),
  ("model.stack_blocks", 1, "true or false"),
  ("model_name", "resnet_x", "one of"),
  ("data.name", "imagenet9", "one of synthetic, digits"),
  ("data.augment", "foo", "one of none, cifar, inception"),
  ("data.image_size", -1, "an integer >= 0"),
  ("data.eval_image_size", 0, "an integer > 0"),
  ("data.crop_padding", -1, "an integer >= 0"),
  ("data.eval_crop_fraction", 0.0, "a number in (0, 1]"),
  ("data.eval_crop_fraction", 1.5, "a number in (0, 1]"),
  ("data.resize_method", "nearest", "one of bilinear, bicubic"),
  ("data.randaugment", "4-5", "RandAugment level must be digits"),
  ("data.validation_examples", -1, "an integer >= 0"),
  ("data.mixup_alpha", -1.0, "a number >= 0"),
  ("data.cutmix_alpha", -0.5, "a number >= 0"),
  ("data.worker_threads", -1, "an integer >= 0"),
  ("data.prefetch_batches", -2, "an integer >= 0"),
  ("data.synthetic.num_classes", 1, "an integer >= 2"),
  ("train.keep_checkpoints", 0, "an integer > 0"),
  ("train.keep_checkpoints", -1, "an integer > 0"),
  ("train.batch_size", 0, "an integer > 0"),
  ("train.batch_size", -8, "an integer > 0"),
  ("train.num_epochs", 0.0, "a number > 0"),
  ("train.num_steps", 0, "an integer > 0"),
  ("train.eval_batch_size", 0, "an integer > 0"),
  ("train.eval_every", -1, "an integer >= 0"),
  ("train.eval_every_epochs", 0.0, "a number > 0"),
  ("train.checkpoint_every", -1, "an integer >= 0"),
  ("train.log_every", -1, "an integer >= 0"),
  ("train.label_smoothing", 2.0, "a number in [0, 1)"),
  ("train.label_smoothing", -0.1, "a number in [0, 1)"),
  ("train.ema_decay", 1.5, "a number in [0, 1)"),
  ("train.ema_decay", 1.0, "a number in [0, 1)"),
  ("train.compute_dtype", "fp8", "one of float32, bfloat16, auto"),
  ("train.num_devices", -1, "an integer >= 0"),
  ("train.profile_steps", "5:2", "'START:END' with integers 1 <= START < END"),
  ("train.profile_steps", "10", "'START:END' with integers 1 <= START < END"),
  ("train.peak_flops_per_device", -1.0, "a number >= 0"),
  ("optimizer.name", "lamb", "one of sgd, adamw"),
  ("optimizer.base_lr", -0.1, "a number > 0"),
  ("optimizer.base_lr", 0.0, "a number > 0"),
  ("optimizer.base_lr", float("inf"), "a number > 0"),
  ("optimizer.momentum", 1.0, "a number in [0, 1)"),
  ("optimizer.momentum", -0.5, "a number in [0, 1)"),
  ("optimizer.b2", 1.5, "a number in [0, 1)"),
  ("optimizer.eps", 0.0, "a number > 0"),
  ("optimizer.weight_decay", -1e-4, "a number >= 0"),
  ("optimizer.warmup_epochs", -1.0, "a number >= 0"),
  ("optimizer.warmup_steps", -5, "an integer >= 0"),
  ("optimizer.warmup_fraction", 1.0, "a number in [0, 1)"),
  ("optimizer.end_lr", -1.0, "a number >= 0"),
  ("optimizer.agc_clip", -0.01, "a number >= 0"),
  ("optimizer.agc_eps", 0.0, "a number > 0"),
]


def set_field(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value


def files_under(path: pathlib.Path) -> dict[pathlib.Path, bytes]:
  return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} if path.exists() else {}


def assert_refused(code: int, err: str, *fragments: str) -> str:
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize(
  "field,value,allowed", CONFIG_CASES, ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES]
)
def test_config_value_is_refused_before_anything_runs(field, value, allowed, tmp_path, capsys):
  config = quickstart.get_config()
  set_field(config, field, value)
  workdir = tmp_path / "run"
  code = launcher.launch(config, str(workdir))
  line = assert_refused(code, capsys.readouterr().err, f"{field}={value!r}", allowed)
  assert "is not allowed" in line
  assert not workdir.exists()


def test_unknown_variant_is_refused_against_the_models_table(tmp_path, capsys):
  config = imagenet.get_config("model=nf_regnet")
  config.model.variant = "B9"
  assert launcher.launch(config, str(tmp_path / "run")) == 2
  assert_refused(2, capsys.readouterr().err, "model.variant='B9'", "one of B0, B1")


def test_more_devices_than_the_machine_has_are_refused(tmp_path, capsys):
  config = quickstart.get_config()
  config.train.num_devices = 99
  workdir = tmp_path / "run"
  code = launcher.launch(config, str(workdir))
  allowed = "at most the 8 devices available"
  assert_refused(code, capsys.readouterr().err, "train.num_devices=99 is not allowed", allowed)
  assert files_under(workdir) == {}


def test_a_training_batch_larger_than_the_training_split_is_refused(tmp_path, capsys):
  config = quickstart.get_config()
  config.train.batch_size = 4096
  workdir = tmp_path / "run"
  code = launcher.launch(config, str(workdir))
  assert_refused(code, capsys.readouterr().err, "train.batch_size=4096", "1437 training examples")
  assert files_under(workdir) == {}


@pytest.mark.parametrize("kind", ["file", "uncreatable", "unwritable"])
def test_a_workdir_that_cannot_be_written_is_refused(kind, tmp_path, capsys):
  if kind == "file":
    workdir = tmp_path / "run"
    workdir.write_text("not a directory\n")
    fragment = "is a file, not a directory"
  else:  # Root may write anywhere on a normal file system; /proc and /sys refuse anyone.
    workdir = pathlib.Path("/proc/nfresnet_run" if kind == "uncreatable" else "/sys/kernel")
    fragment = "is not writable"
    if not workdir.parent.is_dir() or (kind == "unwritable" and not workdir.is_dir()):
      pytest.skip(f"{workdir.parent} does not exist on this system")
  before = files_under(workdir) if kind == "file" else None
  code = launcher.launch(quickstart.get_config(), str(workdir))
  assert_refused(code, capsys.readouterr().err, f"--workdir={workdir}", fragment)
  if before is not None:
    assert workdir.read_text() == "not a directory\n"


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize(
  "override,fragment",
  [
    ("--config.model.depth=19", "model.depth=19 is not allowed: one of 18"),
    ("--config.train.keep_checkpoints=0", "train.keep_checkpoints=0 is not allowed"),
    ("--config.train.label_smoothing=2", "train.label_smoothing=2.0 is not allowed"),
  ],
)
def test_the_command_line_refuses_with_status_2(override, fragment, tmp_path):
  workdir = tmp_path / "run"
  done = run_cli(
    "experiments.main",
    "--config=experiments/configs/quickstart.py",
    f"--workdir={workdir}",
    override,
  )
  assert_refused(done.returncode, done.stderr, fragment)
  assert not workdir.exists()


SPP_CASES = [
  (["--models=nf_resnet:width=-1", "--out={out}"], "width=-1 is not allowed: a number > 0"),
  (["--models=nf_resnet:depth=19", "--out={out}"], "depth=19 is not allowed: one of 18"),
  (["--models=nf_resnet:alpha=0", "--out={out}"], "alpha=0 is not allowed"),
  (["--models=nf_resnet:activation=foo", "--out={out}"], "activation='foo' is not allowed"),
  (["--models=nf_resnet:stem=foo", "--out={out}"], "stem='foo' is not allowed"),
  (["--models=nf_resnet", "--resolution=-1", "--out={out}"], "--resolution: -1 is not a positive"),
  (["--models=nf_resnet", "--batch_size=0", "--out={out}"], "--batch_size: 0 is not a positive"),
  (["--figure=9", "--out={out}"], "--figure"),
]


@pytest.mark.parametrize("argv,fragment", SPP_CASES, ids=[a[0] for a, _ in SPP_CASES])
def test_spp_command_line_refuses(argv, fragment, tmp_path, capsys):
  from experiments.spp import cli as spp_cli

  out = tmp_path / "spp"
  try:
    code = spp_cli.main([a.format(out=out) for a in argv])
  except SystemExit as exit_:  # argparse errors leave through UsageParser.error.
    code = exit_.code
  assert_refused(code, capsys.readouterr().err, fragment)
  assert not out.exists()


def test_report_and_tune_refuse_a_missing_or_empty_root(tmp_path, capsys):
  from experiments.studies import tune

  (tmp_path / "empty").mkdir()
  for argv, fragment in [
    ([str(tmp_path / "missing")], "is not a directory"),
    ([str(tmp_path / "empty")], "no runs under"),
  ]:
    assert_refused(tune.main(argv), capsys.readouterr().err, fragment)
  done = run_cli("experiments.studies.report", str(tmp_path / "empty"))
  assert_refused(done.returncode, done.stderr, "no runs under")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
