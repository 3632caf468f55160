"""``python -m experiments.spp``: spec parsing, outputs, and one-line usage errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import nfresnet
from experiments.spp import cli as spp
from experiments.spp import models as spp_models

TINY = "depth=18,width=0.125,stem=cifar"


def run_cli(argv: list[str]) -> int:
  try:
    return spp.main(argv)
  except SystemExit as exit_:  # argparse errors.
    return exit_.code


def test_parse_values_are_typed():
  assert spp.parse_value("3") == 3 and isinstance(spp.parse_value("3"), int)
  assert spp.parse_value("0.25") == 0.25
  assert spp.parse_value("True") is True and spp.parse_value("false") is False
  assert spp.parse_value("silu") == "silu"
  choice = spp.parse_model_spec("nf_resnet:depth=50,skip_gain_init=1,use_se=true,activation=silu")
  assert dict(choice.kwargs) == {
    "depth": 50,
    "skip_gain_init": 1,
    "use_se": True,
    "activation": "silu",
  }


def test_registry_defaults_and_analytic_curve():
  he = spp.parse_model_spec("nf_he:depth=50")
  assert he.kwargs["weight_standardization"] is False and he.kwargs["skip_gain_init"] == 1.0
  assert he.analytic() is None
  relu, silu = (spp.parse_model_spec(f"nf_resnet:activation={g}") for g in ("relu", "silu"))
  assert spp_models.mean_field_curves(relu.entry.constructor, relu.kwargs) is None
  curves = spp_models.mean_field_curves(silu.entry.constructor, silu.kwargs)
  assert curves["avg_var"][-1] > 1.01 * silu.analytic()[-1]
  for extra in ("use_se=true", "reference_gammas=true"):
    other = spp.parse_model_spec(f"nf_resnet:activation=silu,{extra}")
    assert spp_models.mean_field_curves(other.entry.constructor, other.kwargs) is None, extra
  for figure in ("2", "silu"):  # Figure 2's stem has no max pool (docs/signal_propagation.md).
    for _, model in spp.FIGURES[figure][1]:
      assert spp.parse_model_spec(model).kwargs["stem"] == "imagenet_no_pool", model
  nf = spp.parse_model_spec("nf_resnet:depth=26,alpha=0.1")
  np.testing.assert_allclose(nf.analytic()[:3], [1.01, 1.02, 1.01])
  assert spp.parse_model_spec("resnetv2:depth=50").entry.batch_norm
  assert spp.parse_model_spec("nf_resnet:stem=cifar").downsampling() == 8
  for figure in spp.FIGURES:
    assert len(spp.check_arguments(spp.build_parser().parse_args([f"--figure={figure}"])))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  out = tmp_path_factory.mktemp("spp")
  argv = [
    f"--models=nf_resnet:{TINY},skip_gain_init=1,activation=silu",
    f"--models=resnetv2:{TINY},order=relu_bn",
    "--resolution=16",
    "--batch_size=4",
    "--seed=3",
    f"--out={out}",
  ]
  assert run_cli(argv) == 0
  return out


def test_writes_png_json_csv(outputs):
  assert (outputs / "spp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  payload = json.loads((outputs / "spp.json").read_text())
  settings = payload["settings"]
  assert settings["seed"] == 3 and settings["resolution"] == 16 and settings["batch_size"] == 4
  assert settings["input"] == "gaussian" and settings["input_shape"] == [4, 16, 16, 3]
  assert settings["jax_version"]
  nf, bn = payload["models"]
  assert nf["spec"] == f"nf_resnet:{TINY},skip_gain_init=1,activation=silu"
  assert nf["kwargs"]["depth"] == 18
  for model in (nf, bn):
    for key in ("avg_sq_mean", "avg_var", "residual_var", "block_names", "expected_var"):
      assert len(model[key]) == 8, key
    assert model["stage_ends"] == [1, 3, 5, 7]
  assert nf["analytic_var"] == pytest.approx([1.04, 1.08] * 4)
  assert bn["analytic_var"] is None and bn["mean_field"] is None
  silu = nfresnet.mean_field_signal_variance(18, "silu")
  assert nf["mean_field"]["avg_var"] == pytest.approx(silu["avg_var"].tolist())
  assert nf["mean_field"]["residual_var"] == pytest.approx(silu["residual_var"].tolist())
  # ReLU-BN-Conv with batch statistics: channel means near zero (paper Figure 1) on the
  # 16 px maps of stage 1; the 2 px maps of stage 4 leave 16 samples per channel.
  assert max(bn["avg_sq_mean"][:2]) < 0.01
  with open(outputs / "spp.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16
  assert float(rows[0]["avg_var"]) == pytest.approx(nf["avg_var"][0], rel=1e-5)
  assert rows[8]["analytic_var"] == "" and rows[8]["mean_field_var"] == ""
  assert float(rows[7]["mean_field_residual_var"]) == pytest.approx(silu["residual_var"][7], 1e-5)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--figure=3"], "invalid choice: '3'"),
    (["--models=resnet:depth=50"], "unknown model 'resnet'"),
    (["--models=nf_resnet:depth"], "malformed --models=nf_resnet:depth"),
    (["--models=nf_resnet:depht=50"], "has no option 'depht'; allowed: depth"),
    (["--models=nf_resnet:depth=51"], "depth=51 is not allowed: one of 18"),
    (["--models=resnetv2:order=bn"], "order='bn' is not allowed: one of bn_relu, relu_bn"),
    (["--models=nf_resnet", "--resolution=16"], "--resolution=16 is too small"),
    (["--models=nf_resnet", "--input=imagenet"], "unknown --input=imagenet"),
    (["--figure=2", "--models=nf_resnet"], "either --figure"),
    ([], "either --figure"),
  ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
  assert run_cli(argv) == 2
  err = capsys.readouterr().err
  assert message in err
  assert len(err.strip().splitlines()) == 1, err


def test_missing_dataset_is_one_line_exit_2(monkeypatch, capsys):
  monkeypatch.delenv("NFRESNET_DATA_DIR", raising=False)
  assert run_cli(["--models=nf_resnet", "--input=mnist"]) == 2
  err = capsys.readouterr().err
  assert "mnist" in err and len(err.strip().splitlines()) == 1


def test_dataset_input_shape():
  images = spp.make_inputs("digits", 4, 16, seed=0)
  assert images.shape == (4, 16, 16, 1) and images.dtype == np.float32


def test_subprocess_exit_code_and_single_line():
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.spp", "--models=nf_resnet:width=abc"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert "width" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A quick-start NF-ResNet-18 (width 1/8) trained for 3 steps."""
  from experiments.configs import quickstart
  from experiments.train import train_and_evaluate

  config = quickstart.get_config()
  config.model.width = 0.125
  config.train.batch_size = 16
  config.train.eval_batch_size = 40
  config.train.num_steps = 3
  config.train.progress_bar = False
  workdir = tmp_path_factory.mktemp("quickstart")
  train_and_evaluate(config, workdir)
  return workdir


def test_checkpoint_measures_trained_and_init(trained_workdir, tmp_path):
  import jax

  import nfresnet
  from experiments.checkpoint import load_trained

  argv = [f"--checkpoint={trained_workdir}", "--batch_size=4", "--seed=1", f"--out={tmp_path}"]
  assert run_cli(argv) == 0
  payload = json.loads((tmp_path / "spp.json").read_text())
  settings = payload["settings"]
  # The run's 16 px digits have one channel.
  assert settings["resolution"] == 16 and settings["input_shape"] == [4, 16, 16, 1]
  assert settings["checkpoints"] == [str(trained_workdir)]
  trained, init = payload["models"]
  assert trained["label"].endswith("(trained)") and init["label"].endswith("(at init)")
  assert trained["kwargs"]["model_name"] == "nf_resnet" and trained["kwargs"]["width"] == 0.125
  assert trained["analytic_var"] == pytest.approx([1.04, 1.08] * 4)
  # Skip gains start at 0, so at init every block passes its input through unchanged.
  assert init["avg_var"][0] == pytest.approx(init["avg_var"][1], rel=1e-6)
  assert not np.allclose(trained["avg_var"], init["avg_var"], rtol=1e-3)
  # The CLI's trained numbers are those of the checkpoint's own parameters.
  model = load_trained(trained_workdir)
  inputs = spp.make_inputs("gaussian", 4, 16, seed=1, channels=1)
  direct = nfresnet.signal_propagation(
    lambda x: model.model_fn(x, False), inputs, rng=jax.random.key(1), params=model.params
  )
  np.testing.assert_allclose(trained["avg_var"], direct["avg_var"], rtol=1e-4)
  np.testing.assert_allclose(trained["residual_var"], direct["residual_var"], rtol=1e-4)


def test_checkpoint_input_channels_must_match(trained_workdir, capsys):
  # Synthetic images are RGB; the digits run expects one channel.
  assert run_cli([f"--checkpoint={trained_workdir}", "--input=synthetic"]) == 2
  err = capsys.readouterr().err
  assert "has 3 channels; the checkpoint expects 1" in err, err
  assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["missing", "not_a_workdir", "no_checkpoint"])
def test_bad_checkpoint_is_one_line_exit_2(kind, tmp_path, trained_workdir, capsys):
  workdir = tmp_path / "run"
  if kind != "missing":
    workdir.mkdir()
  if kind == "no_checkpoint":
    (workdir / "config.json").write_text((trained_workdir / "config.json").read_text())
  assert run_cli([f"--checkpoint={workdir}", f"--out={tmp_path}"]) == 2
  err = capsys.readouterr().err
  expected = {
    "missing": "no such directory",
    "not_a_workdir": "config.json not found",
    "no_checkpoint": "no readable checkpoint",
  }[kind]
  assert f"--checkpoint={workdir}: " in err and expected in err, err
  assert len(err.strip().splitlines()) == 1
