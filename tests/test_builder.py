"""``experiments.builder``: one builder for every user; evaluation batches on any device count."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from experiments import builder
from experiments.configs import ConfigError, imagenet, quickstart

REPO = pathlib.Path(__file__).resolve().parents[1]

# An ImageNet config's evaluation data path on N fake devices: the recipe's batch of 1000,
# padded to a multiple of N and masked. Synthetic 8 px images stand in for ImageNet.
EVAL_DRY_RUN = textwrap.dedent(
  """
  import json, sys
  import jax
  from experiments import builder, data
  from experiments.configs import imagenet

  config = imagenet.get_config(sys.argv[1])
  config.data.name = "synthetic"
  config.data.update(image_size=8, eval_image_size=None)
  config.data.synthetic.update(image_size=8, num_train=16, num_test=2100, num_classes=1000)
  config.train.batch_size = jax.device_count()
  experiment = builder.build(config, 1000, 16)
  source = data.load_source(config.data, "test")
  shapes, count = set(), 0.0
  for batch in data.eval_batches(source, config.data, global_batch_size=experiment.eval_batch_size):
    sharded = experiment.shard_batch(batch)
    shapes.add(tuple(sharded["image"].sharding.shard_shape(sharded["image"].shape)))
    count += float(batch["mask"].sum())
  print(json.dumps({"devices": jax.device_count(), "eval_batch": experiment.eval_batch_size,
                    "config_eval_batch": config.train.eval_batch_size,
                    "shard_shapes": sorted(shapes), "count": count}))
  """
)


@pytest.mark.parametrize("devices", [16, 32])
def test_imagenet_eval_batches_build_on_16_and_32_devices(devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  proc = subprocess.run(
    [sys.executable, "-c", EVAL_DRY_RUN, "model=nf,depth=50"],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == devices and out["config_eval_batch"] == 1000
  assert out["eval_batch"] == {16: 1008, 32: 1024}[devices]
  assert out["shard_shapes"] == [[out["eval_batch"] // devices, 8, 8, 3]]
  assert out["count"] == 2100  # Every example once; the padding is masked out.


def test_padded_eval_batch_size_and_checks():
  config = quickstart.get_config("smoke")
  config.train.eval_batch_size = 1000
  assert [builder.padded_eval_batch_size(config, n) for n in (1, 8, 16, 24)] == [
    1000,
    1000,
    1008,
    1008,
  ]
  config.train.batch_size = 16
  builder.check_config(config, 16)  # An evaluation batch of any size is fine.
  config.train.batch_size = 12
  with pytest.raises(
    ConfigError, match="train.batch_size=12 is not allowed: a multiple of the device count"
  ):
    builder.check_config(config, 8)


def test_regnet_recipe_evaluates_at_the_test_resolution_with_bicubic_crops():
  config = imagenet.get_config("model=nf_regnet,variant=B2")
  assert (config.data.image_size, config.data.eval_image_size) == (240, 272)
  assert config.data.resize_method == "bicubic"
  assert config.optimizer.weight_decay == pytest.approx(7e-5)
  smoke = imagenet.get_config("model=nf_regnet,variant=B2,smoke")
  assert smoke.data.eval_image_size is None
