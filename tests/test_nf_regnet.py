"""Tests for nfresnet.nf_regnet: layer list, counts, betas, a training step, signal propagation.

Counts and shapes are abstract (``jax.eval_shape``, nothing computed). Only the
SGD steps and the B0 signal-propagation run compute; they share one compiled
init. Compilation dominates their cost on CPU, so they use the ``unsafe_rbg``
PRNG (XLA compiles its key splits about 3x faster than threefry's) and XLA's
lowest backend optimization level; the statistics depend on neither.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import builder, steps
from experiments.configs import imagenet
from experiments.train_state import TrainState
from nfresnet import NF_REGNET_VARIANTS, NFRegNet, count_macs, count_params, signal_propagation

VARIANTS = tuple(NF_REGNET_VARIANTS)

# Measured with this implementation; equal to reference_counts() below, an
# independent count of the reference layer list (deepmind-research nfnets/nf_regnet.py).
PARAMS = {
  "B0": 8_595_372,
  "B1": 10_019_208,
  "B2": 13_785_904,
  "B3": 18_136_667,
  "B4": 29_315_830,
  "B5": 48_707_138,
}
# Multiply-accumulates per example at the test resolution.
MACS = {
  "B0": 443_672_488,
  "B1": 733_522_624,
  "B2": 1_145_075_772,
  "B3": 1_999_206_624,
  "B4": 4_467_269_888,
  "B5": 11_097_831_488,
}


def reference_counts(variant: str, num_classes: int = 1000) -> tuple[int, int]:
  """(parameters, MACs at the test resolution) of the reference NF-RegNet layer list.

  Every WS conv has a gain and a bias per output channel; the first block expands
  by 1, the others by 2.25, rounded down to groups of 8; SE hidden width is half
  the expanded width, both SE layers have biases; each block has a skip gain.
  """
  row = NF_REGNET_VARIANTS[variant]

  def conv(k, cin, cout, size, groups=1):
    return k * k * cin // groups * cout + 2 * cout, size * size * k * k * cin // groups * cout

  size = math.ceil(row.test_resolution / 2)
  ch = int(row.widths[0] * 0.75)
  params, macs = conv(3, 3, ch, size)
  first = True
  for base, depth in zip(row.widths, row.depths, strict=True):
    out = int(base * 0.75)
    for block in range(depth):
      groups = int(ch * (1 if first else 2.25)) // 8
      mid, hidden = groups * 8, groups * 8 // 2
      layers = [conv(1, ch, mid, size)]
      size = math.ceil(size / 2) if block == 0 else size
      layers += [conv(3, mid, mid, size, groups), conv(1, mid, out, size)]
      layers += [conv(1, ch, out, size)] if block == 0 else []
      se = 2 * mid * hidden
      params += sum(p for p, _ in layers) + se + hidden + mid + 1
      macs += sum(m for _, m in layers) + se
      ch, first = out, False
  head = int(1280 * ch // 440)
  p, m = conv(1, ch, head, size)
  return params + p + head * num_classes + num_classes, macs + m + head * num_classes


def model_fn(variant: str, **kwargs):
  return lambda x: NFRegNet(1000, variant, **kwargs)(x, is_training=False)


def build(**kwargs) -> NFRegNet:
  """Constructs a model inside a transform and returns it (for its attributes)."""
  built = []
  hk.transform(lambda: built.append(NFRegNet(10, **kwargs))).init(None)
  return built[0]


@pytest.fixture(scope="module")
def abstract_params():
  """Parameter shapes of every variant (eval_shape at 64 px: shapes ignore resolution)."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return {v: jax.eval_shape(hk.transform(model_fn(v)).init, jax.random.key(0), x) for v in VARIANTS}


def test_variant_table():
  rows = {
    v: (r.train_resolution, r.test_resolution, r.dropout_rate)
    for v, r in NF_REGNET_VARIANTS.items()
  }
  assert rows == {
    "B0": (192, 224, 0.2),
    "B1": (224, 256, 0.2),
    "B2": (240, 272, 0.3),
    "B3": (288, 320, 0.3),
    "B4": (320, 384, 0.4),
    "B5": (384, 456, 0.4),
  }
  assert NF_REGNET_VARIANTS["B5"].widths == (80, 168, 336, 704)
  assert NF_REGNET_VARIANTS["B5"].depths == (3, 7, 14, 14)
  assert build(variant="B3").dropout_rate == 0.3
  assert build(variant="B3", dropout_rate=0.0).dropout_rate == 0.0


def test_unknown_variant_names_allowed_values():
  with pytest.raises(ValueError, match="unknown variant 'B9'; allowed: B0, B1, B2, B3, B4, B5"):
    build(variant="B9")


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_reference(abstract_params, variant):
  measured = count_params(abstract_params[variant])
  assert measured == PARAMS[variant]
  assert measured == reference_counts(variant)[0]


def test_b0_layer_shapes(abstract_params):
  p = abstract_params["B0"]
  shape = lambda module, name="w": p[f"nf_regnet/{module}"][name].shape
  assert shape("stem") == (3, 3, 3, 36)
  # First block: expansion 1, int(36 * 1) // 8 = 4 groups of 8 = 32 channels.
  assert shape("stage1_block1/conv0") == (1, 1, 36, 32)
  assert shape("stage1_block1/conv1") == (3, 3, 8, 32)
  assert shape("stage1_block1/squeeze_excite/linear0") == (32, 16)
  assert shape("stage1_block1/conv2") == (1, 1, 32, 36)
  assert "nf_regnet/stage1_block1/conv_shortcut" in p  # stride 2, same width.
  # int(36 * 2.25) = 81 -> 10 groups -> 80 channels; SE hidden 40.
  assert shape("stage2_block1/conv1") == (3, 3, 8, 80)
  assert shape("stage2_block1/squeeze_excite/linear1") == (40, 80)
  assert shape("stage2_block1/conv_shortcut") == (1, 1, 36, 78)
  assert "nf_regnet/stage2_block2/conv_shortcut" not in p
  assert shape("final_conv") == (1, 1, 330, 960)
  assert p["nf_regnet/stage4_block6"]["skip_gain"].shape == ()


@pytest.mark.parametrize("variant", VARIANTS)
def test_macs_at_test_resolution(variant):
  res = NF_REGNET_VARIANTS[variant].test_resolution
  macs = count_macs(model_fn(variant), (1, res, res, 3))
  assert macs == MACS[variant]
  assert macs == reference_counts(variant)[1]


def test_reported_macs_b0_b1():
  assert round(MACS["B0"] / 1e9, 2) == 0.44
  assert round(MACS["B1"] / 1e9, 2) == 0.73


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_at_train_and_test_resolution(abstract_params, variant):
  row = NF_REGNET_VARIANTS[variant]
  apply = hk.transform(model_fn(variant)).apply
  for res in (row.train_resolution, row.test_resolution):
    x = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
    out = jax.eval_shape(apply, abstract_params[variant], None, x)
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_b0_betas_and_drop_rates():
  specs = build(variant="B0").specs
  beta_sq = [round(s.beta**2, 6) for s in specs]
  assert beta_sq == [
    1.0,
    *(1.04, 1.04, 1.08),
    *(1.12, 1.04, 1.08, 1.12, 1.16, 1.2),
    *(1.24, 1.04, 1.08, 1.12, 1.16, 1.2),
  ]
  assert [s.stride for s in specs if s.transition] == [2, 2, 2, 2]
  assert specs[-1].stochdepth_rate == pytest.approx(0.1 * 15 / 16)


FAST_COMPILE = {"xla_backend_optimization_level": 0}


def rbg_key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def b0_params():
  """One B0 initialization (skip gains 1), shared by the SGD and SPP tests."""
  init = hk.transform(lambda x: NFRegNet(10, "B0", skip_gain_init=1.0)(x, is_training=False)).init
  return jax.jit(init, compiler_options=FAST_COMPILE)(rbg_key(0), jnp.zeros((1, 32, 32, 3)))


def test_sgd_steps_decrease_loss(b0_params):
  """Three steps of the builder's train step (the NF-RegNet config's smoke form, full B0)."""
  config = imagenet.get_config("model=nf_regnet,variant=B0,smoke")
  config.model.update(width=0.75, skip_gain_init=1.0)  # The constructor defaults of b0_params.
  config.train.update(batch_size=8, ema_decay=0.0)
  config.optimizer.update(warmup_steps=0, base_lr=0.1, end_lr=0.1)
  experiment = builder.build(config, 10, 1000)
  images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  batch = {"image": images, "label": jnp.arange(8) % 10}
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=b0_params,
    model_state={},
    opt_state=experiment.optimizer.init(b0_params),
    ema_params=None,
    rng=jax.random.key_data(jax.random.key(0)),
  )
  state = jax.device_put(state, steps.replicated_sharding(experiment.mesh))
  losses = []
  for _ in range(3):
    state, metrics = experiment.train_step(state, experiment.shard_batch(batch))
    losses.append(float(steps.fetch(metrics)["loss"]))
  assert losses[0] == pytest.approx(math.log(10), abs=1e-6)  # Zero-initialised classifier.
  assert losses[0] > losses[1] > losses[2]
  assert np.isfinite(losses).all()


def b0_spp_fn(x):
  return NFRegNet(10, "B0", skip_gain_init=1.0)(x, is_training=False)


@pytest.fixture(scope="module")
def b0_spp():
  """``nfresnet.signal_propagation`` of B0 at its training resolution (192 px, batch 8).

  Two inputs: white N(0, 1) noise, and N(0, 1) values constant over 32x32 patches
  (6x6 patches: as coarse as B0's last stage, so no average pool averages
  independent values), scaled to unit variance. Parameters: the library's own
  initialization from ``jax.random.key(0)``.
  """
  key = jax.random.key(2)
  white = jax.random.normal(key, (8, 192, 192, 3))
  patches = jax.random.normal(key, (8, 6, 6, 3))
  smooth = jnp.repeat(jnp.repeat(patches, 32, axis=1), 32, axis=2)
  measure = lambda x: signal_propagation(b0_spp_fn, x, rng=jax.random.key(0))
  return measure(white), measure(smooth / smooth.std())


def test_spp_residual_variance_near_one_on_correlated_inputs(b0_spp):
  """Residual variance after the SE gate: 0.71-1.13, mean 0.89 (SiLU: not exactly 1).

  Other initializations of this narrow network give block means of 0.82-0.98.
  """
  _, smooth = b0_spp
  residual = smooth["residual_var"]
  assert residual.shape == (16,)
  np.testing.assert_array_equal(smooth["stage_ends"], [0, 3, 9, 15])
  assert np.all((residual > 0.65) & (residual < 1.2)), residual
  assert 0.85 < residual.mean() < 0.95, residual
  # No mean shift builds up: the squared mean (0.04-0.11) stays far below the variance.
  assert smooth["avg_sq_mean"].max() < 0.15, smooth["avg_sq_mean"]


def test_spp_white_noise_avg_pool_shortcut_quarters_variance(b0_spp):
  """On white noise each 2x2 average-pool shortcut divides the signal variance by 4."""
  white, _ = b0_spp
  assert 0.8 < white["residual_var"][0] < 1.1
  # First block output = shortcut + alpha * branch (independent at init).
  shortcut = white["avg_var"][0] - 0.2**2 * white["residual_var"][0]
  assert 0.2 < shortcut / white["stem_avg_var"] < 0.3
  assert white["residual_var"][-1] < 0.01  # Four transitions: the signal shrinks ~4**4 times.
