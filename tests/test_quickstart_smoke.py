"""The quick-start config end to end for a few steps (NF and ``:model=bn``), with its outputs."""

import json

import numpy as np
import pytest

from experiments import steps
from experiments.configs import ConfigError, quickstart
from experiments.train import train_and_evaluate

NUM_DIGITS_TEST = 360


def smoke_config(arg):
  config = quickstart.get_config(arg)
  config.train.update(num_steps=3, log_every=1, checkpoint_every=2, progress_bar=False)
  config.lock()
  return config


@pytest.mark.parametrize("arg", [None, "model=bn"])
def test_quickstart_runs_and_writes_outputs(arg, tmp_path, capsys):
  config = smoke_config(arg)
  state, metrics = train_and_evaluate(config, tmp_path)
  assert int(steps.fetch(state.step)) == 3
  assert metrics["eval/count"] == NUM_DIGITS_TEST  # Every test digit once (360 = 2 * 128 + 104).
  assert 0.0 <= metrics["eval/accuracy"] <= 1.0 and np.isfinite(metrics["train/loss"])
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["kind"]) for r in rows] == [
    (1, "train"),
    (2, "train"),
    (3, "train"),
    (3, "eval"),
  ]
  expected = {
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "param_norm",
    "update_norm",
    "images_per_s",
  }
  assert expected <= set(rows[0])
  assert json.loads((tmp_path / "config.json").read_text())["model_name"] == config.model_name
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "2",
    "3",
  ]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert "total" in capsys.readouterr().out  # The parameter table.
  model_state = steps.fetch(state.model_state)
  if arg == "model=bn":
    means = [v["average"] for k, v in model_state.items() if k.endswith("mean_ema")]
    assert len(means) == 2 * 8 + 1 and all(np.all(np.isfinite(m)) for m in means)
    assert any(np.any(m != 0) for m in means)  # Statistics were updated from data.
  else:
    assert model_state == {}


def test_quickstart_rejects_unknown_arg():
  with pytest.raises(ConfigError, match="quickstart value model='x'; allowed: nf, bn"):
    quickstart.get_config("model=x")
  with pytest.raises(ConfigError, match="unknown quickstart argument 'depth'"):
    quickstart.get_config("depth=50")


def test_quickstart_smoke_form():
  config = quickstart.get_config("model=bn,smoke")
  assert config.model_name == "resnet_v2" and config.data.name == "synthetic"
  assert config.train.num_steps == 2 and config.model.width == 0.0625


def test_validation_split_drives_periodic_evals_and_test_runs_once(tmp_path):
  """With a validation split: eval_every evaluates validation; the test split only at the end."""
  config = quickstart.get_config(None)
  config.data.validation_examples = 300
  config.train.update(num_steps=3, eval_every=2, log_every=1, checkpoint_every=0)
  config.train.progress_bar = False
  _, metrics = train_and_evaluate(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["kind"]) for r in rows if r["kind"] != "train"] == [
    (2, "val"),
    (3, "val"),
    (3, "eval"),
  ]
  assert metrics["val/count"] == 300 and metrics["eval/count"] == NUM_DIGITS_TEST
