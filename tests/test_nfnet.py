"""Tests for nfresnet.nfnet and its config: layer list, exact counts, betas, recipe, smoke run.

Counts and shapes are abstract (``jax.eval_shape``, nothing computed). The forward
test runs F0 at width 1/16 on 32 px inputs; the smoke test trains the config's smoke
form for two steps. That the layer list computes what the authors' NFNet computes is
tested in tests/test_weights_reference.py (their own model's logits, reproduced).
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import builder, models, optim, steps
from experiments.configs import ConfigError
from experiments.configs import nfnet as nfnet_config
from nfresnet import NFNET_VARIANTS, NFNet, count_params
from nfresnet.nfnet import nfnet_specs

# Measured with this implementation. Equal to reference_count() below, an independent
# count of the reference layer list (deepmind-research nfnets/nfnet.py), and to the
# reference README's rounded counts: F0 71.5M, F1 132.6M, F2 193.8M, ..., F6 438.4M.
PARAMS = {
  "F0": 71_489_284,
  "F1": 132_634_256,
  "F2": 193_779_228,
  "F3": 254_924_200,
  "F4": 316_069_172,
  "F5": 377_214_144,
  "F6": 438_359_116,
  "F7": 499_504_088,
  "F0+": 118_824_516,
  "F1+": 220_357_008,
  "F2+": 321_889_500,
  "F3+": 423_421_992,
  "F4+": 524_954_484,
  "F5+": 626_486_976,
  "F6+": 728_019_468,
  "F7+": 829_551_960,
}
README_MILLIONS = {"F0": 71.5, "F1": 132.6, "F2": 193.8, "F3": 254.9, "F4": 316.1, "F5": 377.2}
README_MILLIONS["F6"] = 438.4


def reference_count(variant: str, num_classes: int = 1000) -> int:
  """Parameters of the reference NFNet layer list, counted by hand.

  Every WS conv has a gain and a bias per output channel. Stem: 3x3 convs to 16, 32,
  64 and half the first base width. Block: 1x1 to ``mid = out // 2`` (groups of 128),
  two grouped 3x3 convs, 1x1 to ``out``, a 1x1 shortcut conv in each stage's first
  block, SE ``out -> out // 2 -> out`` with biases, one skip gain. Head: 1x1 conv to
  ``2 * out``, then the classifier.
  """
  row = NFNET_VARIANTS[variant]

  def conv(k, cin, cout, groups=1):
    return k * k * cin // groups * cout + 2 * cout

  stem = [16, 32, 64, row.widths[0] // 2]
  params = sum(conv(3, cin, cout) for cin, cout in zip([3] + stem[:-1], stem, strict=True))
  ch = stem[-1]
  for out, depth in zip(row.widths, row.depths, strict=True):
    for block in range(depth):
      groups = out // 2 // 128
      mid = groups * 128
      params += conv(1, ch, mid) + 2 * conv(3, mid, mid, groups) + conv(1, mid, out)
      params += conv(1, ch, out) if block == 0 else 0
      params += 2 * out * (out // 2) + out // 2 + out + 1
      ch = out
  return params + conv(1, ch, 2 * ch) + 2 * ch * num_classes + num_classes


def init_shapes(variant: str, num_classes: int = 1000, **kwargs):
  fn = hk.transform(lambda x: NFNet(num_classes, variant, **kwargs)(x, is_training=False))
  return jax.eval_shape(fn.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("variant", ["F0", "F1"])
def test_parameter_counts_equal_the_reference_exactly(variant):
  assert count_params(init_shapes(variant)) == PARAMS[variant] == reference_count(variant)
  assert round(PARAMS[variant] / 1e6, 1) == README_MILLIONS[variant]


def test_every_variant_count_matches_the_hand_count_and_the_readme():
  for variant, count in PARAMS.items():
    assert reference_count(variant) == count, variant
    if variant in README_MILLIONS:
      assert round(count / 1e6, 1) == README_MILLIONS[variant], variant
  assert set(PARAMS) == set(NFNET_VARIANTS)


def test_f0_layer_list():
  shapes = {k: {n: v.shape for n, v in leaves.items()} for k, leaves in init_shapes("F0").items()}
  stem = [shapes[f"nfnet/stem_conv{i}"]["w"] for i in range(4)]
  assert stem == [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 64), (3, 3, 64, 128)]
  first = "nfnet/stage1_block1"
  assert shapes[f"{first}/conv0"]["w"] == (1, 1, 128, 128)
  assert shapes[f"{first}/conv1"]["w"] == (3, 3, 128, 128)  # One group of 128.
  assert shapes[f"{first}/conv1b"]["w"] == (3, 3, 128, 128)
  assert shapes[f"{first}/conv2"]["w"] == (1, 1, 128, 256)
  assert shapes[f"{first}/conv_shortcut"]["w"] == (1, 1, 128, 256)
  assert shapes[f"{first}/squeeze_excite/linear0"]["w"] == (256, 128)
  assert shapes[f"{first}/squeeze_excite/linear1"]["w"] == (128, 256)
  assert shapes[first] == {"skip_gain": ()}
  block = "nfnet/stage3_block2"  # 768-wide bottleneck in 6 groups of 128.
  assert shapes[f"{block}/conv1"]["w"] == (3, 3, 128, 768)
  assert f"{block}/conv_shortcut" not in shapes
  assert shapes["nfnet/final_conv"]["w"] == (1, 1, 1536, 3072)
  assert shapes["nfnet/classifier"]["w"] == (3072, 1000)
  blocks = sorted({k.split("/")[1] for k in shapes if "_block" in k})
  assert len(blocks) == sum(NFNET_VARIANTS["F0"].depths) == 12


def test_betas_strides_and_stochastic_depth_follow_the_reference():
  stem, specs = nfnet_specs("F0", stochdepth_rate=0.25)
  assert stem == (16, 32, 64, 128)
  assert [s.stride for s in specs if s.transition] == [1, 2, 2, 2]
  assert [s.use_projection for s in specs] == [s.transition for s in specs]
  # beta = 1 / expected std before the block; transitions reset the variance to 1.
  expected_std, betas = 1.0, []
  for depth in NFNET_VARIANTS["F0"].depths:
    for block in range(depth):
      betas.append(expected_std)
      expected_std = math.sqrt((1.0 if block == 0 else expected_std**2) + 0.04)
  np.testing.assert_allclose([s.beta for s in specs], betas)
  np.testing.assert_allclose([s.stochdepth_rate for s in specs], [0.25 * i / 12 for i in range(12)])


def test_variant_table_matches_the_reference():
  rows = {
    v: (r.train_resolution, r.test_resolution, r.dropout_rate) for v, r in NFNET_VARIANTS.items()
  }
  assert rows["F0"] == (192, 256, 0.2)
  assert rows["F1"] == (224, 320, 0.3)
  assert rows["F3"] == (320, 416, 0.4)
  assert rows["F7"] == (480, 608, 0.5)
  assert NFNET_VARIANTS["F7"].depths == (8, 16, 48, 24)
  assert NFNET_VARIANTS["F2+"].widths == (384, 768, 2048, 2048)
  assert NFNET_VARIANTS["F2+"].depths == NFNET_VARIANTS["F2"].depths
  levels = {v: (r.randaugment_layers, r.randaugment_magnitude) for v, r in NFNET_VARIANTS.items()}
  assert levels["F0"] == (4, 5) and levels["F1"] == (4, 10) and levels["F4"] == (4, 15)


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # Compilation dominates on CPU.


def test_forward_shapes_dropout_and_zero_skip_gain_blocks():
  """Tiny F0 on 32 px: finite logits; dropout changes them in training; skip gains start at 0."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

  def forward(x, is_training):
    model = NFNet(7, "F0", width=0.0625, group_width=8)
    assert (model.train_resolution, model.test_resolution, model.dropout_rate) == (192, 256, 0.2)
    return model(x, is_training)

  fn = hk.transform(forward)
  init = jax.jit(fn.init, static_argnums=2, compiler_options=FAST_COMPILE)
  params = init(jax.random.key(1), x, False)

  def both(params, rng, x):
    return fn.apply(params, None, x, False), fn.apply(params, rng, x, True)

  logits, train_logits = jax.jit(both, compiler_options=FAST_COMPILE)(params, jax.random.key(2), x)
  assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits)))
  assert train_logits.shape == (2, 7) and not np.allclose(train_logits, logits)
  assert all(float(v["skip_gain"]) == 0.0 for k, v in params.items() if "skip_gain" in v)


def test_registered_and_configurable():
  assert models.get_model_class("nfnet") is NFNet
  fields = models.config_fields("nfnet")
  assert {"variant", "width", "activation", "stochdepth_rate", "dropout_rate"} <= set(fields)
  assert fields["activation"].default == "gelu" and fields["alpha"].default == 0.2


def test_config_is_the_reference_recipe():
  config = nfnet_config.get_config("variant=F3")
  assert config.model_name == "nfnet"
  assert config.model.to_dict() == {
    "variant": "F3",
    "activation": "gelu_tanh",
    "alpha": 0.2,
    "se_ratio": 0.5,
    "stochdepth_rate": 0.25,
    "skip_gain_init": 0.0,
    "remat": False,
  }
  assert (config.data.image_size, config.data.eval_image_size) == (320, 416)
  assert config.data.resize_method == "bicubic" and config.data.augment == "inception"
  assert (config.data.mixup_alpha, config.data.cutmix_alpha) == (0.2, 1.0)
  assert config.train.batch_size == 4096 and config.train.num_epochs == 360.0
  assert config.train.ema_decay == 0.99999 and config.train.label_smoothing == 0.1
  assert config.train.compute_dtype == "bfloat16"
  opt = config.optimizer
  assert (opt.name, opt.nesterov, opt.momentum, opt.weight_decay) == ("sgd", True, 0.9, 2e-5)
  assert (opt.agc_clip, opt.agc_eps, opt.warmup_epochs, opt.end_lr) == (0.01, 1e-3, 5.0, 0.0)
  schedule = optim.make_schedule(config, 1_281_167)
  assert schedule.peak_lr == pytest.approx(1.6)  # 0.1 * 4096 / 256.
  assert schedule.total_steps == math.ceil(360 * 1_281_167 / 4096)
  assert schedule.warmup_steps == round(5 * 1_281_167 / 4096)
  assert not optim.is_clipped("nfnet/classifier", "w")
  assert optim.is_clipped("nfnet/stage1_block1/squeeze_excite/linear0", "w")
  kwargs = models.model_kwargs(config, 1000)
  assert count_params(init_shapes(**kwargs)) == PARAMS["F3"]


@pytest.mark.parametrize(
  "arg,message",
  [("variant=F9", "unknown nfnet value variant='F9'"), ("depth=50", "unknown nfnet argument")],
)
def test_bad_arguments_raise_one_line_config_errors(arg, message):
  with pytest.raises(ConfigError, match=message) as error:
    nfnet_config.get_config(arg)
  assert "\n" not in str(error.value)


def test_smoke_form_builds_and_lowers_its_train_and_eval_steps():
  """The smoke config through the one builder: the bf16 AGC train step and the eval step trace
  and lower (compiling them on CPU takes a minute; the other configs' smoke runs train)."""
  config = nfnet_config.get_config("variant=F2,smoke")
  assert (config.model.variant, config.model.width, config.model.group_width) == ("F0", 0.0625, 8)
  assert config.optimizer.agc_clip == 0.01 and config.data.name == "synthetic"
  assert config.data.randaugment is None and config.train.compute_dtype == "bfloat16"
  experiment = builder.build(config, 10, 64)
  state = experiment.abstract_state((16, 16, 3))
  sharded = steps.batch_sharding(experiment.mesh)
  batch = {
    "image": jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32, sharding=sharded),
    "label": jax.ShapeDtypeStruct((8, 10), jnp.float32, sharding=sharded),  # MixUp targets.
    "mask": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharded),
  }
  train = experiment.train_step.lower(state, {k: batch[k] for k in ("image", "label")})
  assert "bf16" in train.as_text()
  new_state, metrics = jax.eval_shape(
    experiment.train_step, state, {k: batch[k] for k in ("image", "label")}
  )
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "grad_norm", "param_norm"} <= set(metrics)
  eval_batch = dict(batch, label=jax.ShapeDtypeStruct((8,), jnp.int32, sharding=sharded))
  sums = jax.eval_shape(experiment.eval_step, state, eval_batch)
  assert "ema_correct" in sums
