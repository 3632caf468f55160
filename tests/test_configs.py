"""Config files and sweeps: every entry builds, every smoke form initializes, one trains per model.

Kept cheap but meaningful: every sweep entry of every config file is built at
full size (argument parsed, overrides applied to the locked config, kwargs
checked against the constructor and the depth against the layout table) and
in its smoke form, whose model is initialized with ``jax.eval_shape`` (cached
by model identity, since seeds and batch sizes do not change the model: 300+
entries collapse to ~20 shape traces). Only one smoke run per config file and
per model family actually trains, through ``train_and_evaluate``.
"""

import functools
import json
import math
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import pytest

import nfresnet
from experiments import models, optim
from experiments.configs import ConfigError, args, imagenet
from experiments.studies import sweep
from experiments.train import train_and_evaluate

CONFIG_DIR = pathlib.Path(__file__).parents[1] / "experiments" / "configs"
CONFIG_FILES = ("imagenet", "fashion_mnist", "cifar10", "digits")
SWEEP_NAMES = ("table1", "table2", "depth", "activation", "meanshift", "table3")
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def config_path(name: str) -> str:
  return str(CONFIG_DIR / f"{name}.py")


@functools.cache
def module(name: str):
  return sweep.load_module(config_path(name))


@functools.cache
def init_shapes(identity: str, image_size: int) -> int:
  """Parameter count of the model ``identity`` (JSON of model_identity) at ``image_size``."""
  ident = json.loads(identity)
  kwargs = ident["model"]
  model_fn = models.make_model_fn(ident["model_name"], kwargs)
  model = hk.transform_with_state(model_fn)
  x = jax.ShapeDtypeStruct((8, image_size, image_size, 3), jnp.float32)
  params, state = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, is_training=True), x)
  logits = jax.eval_shape(
    lambda p, s, x: model.apply(p, s, jax.random.key(1), x, is_training=True)[0], params, state, x
  )
  assert logits.shape == (8, kwargs["num_classes"])
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def check_full_size(config) -> None:
  """The full-size config names a registered model, accepted kwargs and a known depth."""
  kwargs = models.model_kwargs(config, 10)
  if "depth" in kwargs:
    assert kwargs["depth"] in nfresnet.layout.RESNET_DEPTHS
  else:
    assert kwargs["variant"] in nfresnet.NF_REGNET_VARIANTS


FASHION_MNIST_SWEEPS = (
  "table1_tune",
  "meanshift_tune",
  "activation_tune",
  "large_batch_tune",
  "table1_short",
  "table2_short",
  "depth",
  "activation_short",
  "meanshift_short",
  "table3",
  "table1_full",
)  # The protocol's seed sweeps need a tuning.csv: test_protocol_seed_sweeps_read_tuning_csv.


def all_sweeps():
  for name in CONFIG_FILES:
    names = (*SWEEP_NAMES, "table1_full") if name != "imagenet" else SWEEP_NAMES
    for sweep_name in FASHION_MNIST_SWEEPS if name == "fashion_mnist" else names:
      yield name, sweep_name


@pytest.mark.parametrize("name,sweep_name", list(all_sweeps()))
def test_every_sweep_entry_builds_full_size_and_as_smoke(name, sweep_name):
  loaded = sweep.load_sweep(f"{config_path(name)}:{sweep_name}")
  assert loaded.entries
  for entry in loaded.entries:
    config = sweep.entry_config(loaded, entry)
    check_full_size(config)
    for key, value in entry.overrides.items():
      section, field = key.split(".")
      assert config[section][field] == value
    smoke = sweep.entry_config(loaded, entry.with_arg("smoke"))
    assert smoke.model_name == config.model_name
    assert (smoke.data.name, smoke.train.num_steps, smoke.train.progress_bar) == (
      "synthetic",
      2,
      False,
    )
    identity = json.dumps(models.model_identity(smoke, 10), sort_keys=True)
    assert init_shapes(identity, smoke.data.image_size) > 0


@pytest.mark.parametrize(
  "name,arg",
  [
    ("imagenet", "model=nf,depth=101,regularized,smoke"),
    ("imagenet", "model=nf_regnet,variant=B2,smoke"),  # Trains B0 (smoke), EMA and MixUp on.
    ("fashion_mnist", "model=bn,smoke"),
    ("cifar10", "model=skipinit,smoke"),
    ("digits", "model=fixup,smoke"),
  ],
)
def test_smoke_run_trains_two_steps(name, arg, tmp_path):
  config = module(name).get_config(arg)
  config.lock()
  _, metrics = train_and_evaluate(config, tmp_path)
  assert metrics["step"] == 2
  assert metrics["eval/count"] == 16  # The synthetic smoke test split.
  assert math.isfinite(metrics["train/loss"])
  assert ("eval/ema_accuracy" in metrics) == (config.train.ema_decay > 0)  # NF-RegNet recipe.
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval")]


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_accepts_smoke(name):
  config = module(name).get_config("smoke")
  assert config.data.name == "synthetic" and config.train.batch_size == 8
  check_full_size(config)


def test_table1_and_table2_dry_run_counts():
  table1 = sweep.load_sweep(f"{config_path('imagenet')}:table1")
  combos = {(e.arg, e.overrides["train.seed"]) for e in table1.entries}
  assert len(table1.entries) == len(combos) == 5 * 4 * 2 * 5
  models_seen = {e.arg.split(",")[0] for e in table1.entries}
  assert models_seen == {"model=nf", "model=bn", "model=skipinit", "model=fixup"}
  assert sum("regularized" in e.arg for e in table1.entries) == 100
  table2 = sweep.load_sweep(f"{config_path('imagenet')}:table2")
  commands = [sweep.entry_command(table2, e, "/root") for e in table2.entries]
  batches = sorted({int(c.split("=")[-1]) for cmd in commands for c in cmd if "batch_size" in c})
  assert batches == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
  assert len(commands) == 2 * 9


def test_derived_values_follow_overrides():
  config = imagenet.get_config("model=nf,depth=50")
  schedule = optim.make_schedule(config, IMAGENET_TRAIN_EXAMPLES)
  assert schedule.total_steps == math.ceil(90 * IMAGENET_TRAIN_EXAMPLES / 1024)
  assert schedule.warmup_steps == round(5 * IMAGENET_TRAIN_EXAMPLES / 1024)
  assert schedule.peak_lr == pytest.approx(0.4)
  config.train.batch_size, config.train.num_epochs = 256, 10.0
  schedule = optim.make_schedule(config, IMAGENET_TRAIN_EXAMPLES)
  assert schedule.total_steps == math.ceil(10 * IMAGENET_TRAIN_EXAMPLES / 256)
  assert schedule.warmup_steps == round(5 * IMAGENET_TRAIN_EXAMPLES / 256)
  assert schedule.peak_lr == pytest.approx(0.1)
  skipinit = optim.make_schedule(imagenet.get_config("model=skipinit"), IMAGENET_TRAIN_EXAMPLES)
  assert skipinit.peak_lr == pytest.approx(0.2)  # SkipInit/Fixup at 0.2 (paper Section 5).


def test_regnet_recipe_is_not_batch_scaled_and_reads_the_variant_table():
  config = imagenet.get_config("model=nf_regnet,variant=B3")
  variant = nfresnet.NF_REGNET_VARIANTS["B3"]
  assert config.data.image_size == variant.train_resolution
  assert (config.train.num_epochs, config.train.ema_decay) == (360.0, 0.99999)
  assert config.data.mixup_alpha > 0 and config.data.cutmix_alpha > 0
  config.train.batch_size = 256
  schedule = optim.make_schedule(config, IMAGENET_TRAIN_EXAMPLES)
  assert (schedule.peak_lr, schedule.end_lr) == (pytest.approx(0.4), pytest.approx(0.001))
  assert "dropout_rate" not in config.model  # None: NFRegNet takes it from the variant table.


def test_regularized_and_he_model_sections():
  nf = imagenet.get_config("model=nf,depth=152,regularized").model
  assert (nf.depth, nf.stochdepth_rate, nf.dropout_rate, nf.alpha) == (152, 0.1, 0.25, 0.2)
  bn = imagenet.get_config("model=bn,regularized").model
  assert bn.dropout_rate == 0.25 and "stochdepth_rate" not in bn
  he = imagenet.get_config("model=he").model
  assert he.weight_standardization is False
  assert imagenet.get_config("model=he").model_name == "nf_resnet"


@pytest.mark.parametrize(
  "arg,message",
  [
    ("model=resnet", "unknown imagenet value model='resnet'; allowed: nf, he, bn"),
    ("depth=51", "unknown imagenet value depth='51'; allowed: 18, 26, 34, 50"),
    ("depth=big", "bad imagenet value depth='big'"),
    ("colour=red", "unknown imagenet argument 'colour'; allowed: model=nf|he|bn"),
    ("smoke=1", "imagenet argument 'smoke=1' must be written as 'smoke'"),
    ("depth", "imagenet argument 'depth' must be written as 'depth=VALUE'"),
    ("depth=50,depth=101", "imagenet argument 'depth' given twice"),
    ("model=bn,activation=silu", "activation='silu' needs model=nf or model=he"),
    ("model=nf_regnet,regularized", "model=nf_regnet is always regularized"),
  ],
)
def test_bad_arguments_raise_one_line_config_errors(arg, message):
  with pytest.raises(ConfigError, match=message.replace("|", r"\|")) as info:
    imagenet.get_config(arg)
  assert "\n" not in str(info.value)


def test_unknown_sweep_name_lists_the_allowed_ones():
  with pytest.raises(ConfigError, match="unknown imagenet sweep 'table9'; allowed: table1, table2"):
    imagenet.get_sweep("table9")


def test_parse_args_defaults_and_types():
  keys = {"depth": args.Key(int, (), 50), "lr": args.Key(float), "smoke": args.flag()}
  assert args.parse_args(None, keys, "t") == {"depth": 50, "lr": None, "smoke": False}
  assert args.parse_args(" depth=18 , smoke,lr=0.5", keys, "t") == {
    "depth": 18,
    "lr": 0.5,
    "smoke": True,
  }


def test_protocol_tuning_grid_and_seed_sweeps_read_tuning_csv(tmp_path, monkeypatch):
  from experiments.configs import fashion_mnist, small_images

  monkeypatch.setattr(small_images, "RESULTS_DIR", tmp_path)
  grid = fashion_mnist.get_sweep("table1_tune")
  assert len(grid) == 12 * 3  # 4 models x 2 depths + NF/BN regularized x 2 depths; 3 rates.
  assert {e.overrides["optimizer.base_lr"] for e in grid} == {0.05, 0.1, 0.2}
  assert all(e.overrides["data.validation_examples"] == 5000 for e in grid)
  with pytest.raises(
    ConfigError, match="tuning.csv not found: run the fashion_mnist.py:table1_tune"
  ):
    fashion_mnist.get_sweep("table1")
  (tmp_path / "table1").mkdir()
  header = "cell,base_lr,val/accuracy,last_fifth_gain,chosen,run,next_lr"

  def write_tuning(next_lr):
    lines = [header]
    for entry in grid:
      cell, lr = entry.name.rsplit("_lr", 1)
      chosen = float(lr) == 0.2
      edge = next_lr if chosen and cell == "nf18" else ""
      lines.append(f"{cell},{lr},0.9,0.001,{int(chosen)},{entry.name},{edge}")
    (tmp_path / "table1" / "tuning.csv").write_text("\n".join(lines) + "\n")

  write_tuning("0.4")  # nf18's best rate is the grid's largest: one more rate first.
  extended = fashion_mnist.get_sweep("table1_tune")
  assert [e.name for e in extended if e.name not in {g.name for g in grid}] == ["nf18_lr0.4"]
  with pytest.raises(ConfigError, match="best rate at a grid edge for nf18: rerun"):
    fashion_mnist.get_sweep("table1")
  write_tuning("")
  seeds = fashion_mnist.get_sweep("table1")
  assert len(seeds) == 12 * 3 and {e.overrides["optimizer.base_lr"] for e in seeds} == {0.2}
  assert {e.overrides["train.seed"] for e in seeds} == {0, 1, 2}
  reuse = {e.name: e.reuse for e in seeds if e.reuse}
  assert len(reuse) == 12 and reuse["nf18_seed0"] == "../tuning/nf18_lr0.2"
  table2 = fashion_mnist.get_sweep("table2")
  assert len(table2) == 2 * 9 * 3
  assert {e.overrides["train.batch_size"] for e in table2} == {
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
  }
  reused = {e.name: e.reuse for e in table2 if e.reuse}
  assert reused == {
    f"{m}18_batch128_seed{s}": f"../../table1/runs/{m}18_seed{s}"
    for m in ("nf", "bn")
    for s in range(3)
  }


def test_regnet_protocol_compares_the_two_regnets_on_the_cifar_subset(tmp_path, monkeypatch):
  from experiments.configs import cifar10, small_images

  monkeypatch.setattr(small_images, "RESULTS_DIR", tmp_path)
  grid = cifar10.get_sweep("regnet_tune")
  assert [e.name for e in grid] == [
    f"{m}_regnet_b0_lr{lr}" for m in ("nf", "bn") for lr in ("0.05", "0.1", "0.2")
  ]
  configs = [cifar10.get_config(e.arg) for e in grid[::3]]
  assert [c.model_name for c in configs] == ["nf_regnet", "bn_regnet"]
  assert {(c.model.variant, c.model.width, c.data.image_size) for c in configs} == {
    ("B0", 0.25, 32)
  }
  assert all(e.overrides["data.validation_examples"] == 500 for e in grid)
  assert all(e.overrides["train.num_epochs"] == 30.0 for e in grid)
