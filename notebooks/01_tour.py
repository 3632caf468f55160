# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of nfresnet
#
# Normalizer-Free ResNets (Brock, De & Smith, ICLR 2021, arXiv 2101.08692; paper
# Section 4) replace BatchNorm by a scaled residual
# `h_{i+1} = h_i + alpha * f_i(h_i / beta_i)`, Scaled Weight Standardization and
# gamma-scaled activations. This notebook builds NF-ResNet-50 and its BatchNorm
# baseline, counts their parameters and multiply-accumulates, runs a forward pass, looks
# at the parameter tree and the beta/alpha schedule, and computes gamma for a new
# activation. It runs in well under a minute on a laptop CPU.
#
# **Editing.** This notebook is committed twice: as `notebooks/01_tour.py`,
# a [jupytext](https://jupytext.readthedocs.io) percent-format script (the reviewed,
# ruff-checked source), and as `notebooks/01_tour.ipynb`, paired with it
# through the header of the `.py` and committed with outputs cleared. Jupyter with
# jupytext installed (`pip install -e ".[test]"`) opens either file as a notebook and
# saves both. After editing a `.py` in an editor, resync with
# `jupytext --sync notebooks/*.py`; to rewrite an `.ipynb` from its `.py` without outputs:
# `jupytext --to ipynb notebooks/01_tour.py`.
# `python -m pytest -q tests/test_notebooks.py` runs the three notebooks and checks that
# each pair is in sync.

# %%
import haiku as hk
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import nfresnet

print("jax", jax.__version__, "| haiku", hk.__version__, "| devices:", jax.devices())


# %% [markdown]
# ## 1. NF-ResNet-50 and the BN-ResNet-V2-50 baseline
#
# Every model is a Haiku module called as `model(x, is_training)` on NHWC images.
# `jax.eval_shape` traces the initialization abstractly, so counting parameters of a
# 224 px network computes nothing. `count_macs` counts the multiply-accumulates of
# the conv and linear layers per image.


# %%
def nf_resnet50(x, is_training):
  return nfresnet.NFResNet(1000, depth=50)(x, is_training)


def bn_resnet50(x, is_training):
  return nfresnet.ResNetV2(1000, depth=50)(x, is_training)


image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
counts = {}
for name, fn in [("NF-ResNet-50", nf_resnet50), ("BN-ResNet-V2-50", bn_resnet50)]:
  model = hk.transform_with_state(fn)
  shapes, state = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, True), image)
  macs = nfresnet.count_macs(lambda x: fn(x, False), image.shape)
  counts[name] = nfresnet.count_params(shapes)
  print(
    f"{name:16s} {counts[name]:>11,} parameters  {macs / 1e9:.2f} GMACs at 224 px  "
    f"{nfresnet.count_params(state):,} BatchNorm statistics"
  )
assert counts["NF-ResNet-50"] == 25_557_048  # The reference NF-ResNet-50.

# %% [markdown]
# ## 2. A forward pass
#
# `hk.transform(...).init` runs every initializer op by op, which takes tens of
# seconds for a ResNet-50 on a CPU; `nfresnet.draw_params` returns the same values
# (same key sequence) in about a second. NF models have no state, so `hk.transform`
# is enough. A batch of two 64 px images:

# %%
model = hk.transform(nf_resnet50)
x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
params = nfresnet.draw_params(lambda x: nf_resnet50(x, False), jax.random.key(0), x)
logits = jax.jit(model.apply, static_argnums=3)(params, None, x, False)
print("logits", logits.shape, logits.dtype, "std", float(logits.std()))
assert logits.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(logits)))

# %% [markdown]
# ## 3. The parameter tree
#
# Module names are stable (`stem`, `stage{s}_block{b}`, `conv0`, `classifier`):
# optimizer masks, checkpoints and plots rely on them. Each Scaled-WS conv has a
# weight `w`, a per-channel `gain` and a `bias`; each NF block has a scalar
# `skip_gain` (SkipInit, zero at initialization).

# %%
print(len(params), "modules; the first block of stage 2 (a transition block):")
for module in sorted(params):
  if "stage2_block1" in module:
    for name, value in params[module].items():
      path = f"{module}/{name}".removeprefix("nf_resnet/")
      print(f"  {path:34s} {str(value.shape):18s} {value.size:>9,}")
weights, others = hk.data_structures.partition(lambda module, name, value: name == "w", params)
print(
  f"conv/linear weights: {nfresnet.count_params(weights):,}; "
  f"gains, biases, skip gains: {nfresnet.count_params(others):,}"
)

# %% [markdown]
# ## 4. The beta/alpha schedule
#
# Each block divides its input by `beta_i = sqrt(Var(h_i))`, the analytic standard
# deviation of its input, and adds `alpha` times its branch. The expected variance
# grows by `alpha^2` per block and resets to `1 + alpha^2` at each transition block,
# whose shortcut sees the normalized input. The block specs hold both numbers:

# %%
block_type, stem_width, specs = nfresnet.resnet_specs(50, alpha=0.2)
print(f"{block_type} blocks, stem width {stem_width}")
print(f"{'block':14s} {'stride':>6s} {'channels':>9s} {'beta':>7s} {'E[Var] out':>10s}")
for spec in specs:
  print(
    f"{spec.name:14s} {spec.stride:>6d} {spec.out_channels:>9d} "
    f"{spec.beta:>7.4f} {spec.expected_var:>10.2f}"
  )
expected = nfresnet.expected_signal_variance(50, alpha=0.2)
np.testing.assert_allclose([spec.expected_var for spec in specs], expected)
np.testing.assert_allclose([spec.beta for spec in specs[1:]], np.sqrt(expected[:-1]))

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, len(specs) + 1), expected, "o-", label="expected variance 1 + k alpha^2")
ax.plot(range(1, len(specs) + 1), [s.beta for s in specs], "s--", label="beta (input std)")
ax.set_xlabel("residual block")
ax.legend()
plt.show()


# %% [markdown]
# ## 5. Gamma for a new activation
#
# `gamma_g = 1 / sqrt(Var[g(x)])` for `x ~ N(0, 1)` makes `gamma * g(x)` unit-variance.
# `nfresnet.gamma` computes it by quadrature for any elementwise function, e.g. Mish
# `x tanh(softplus(x))`, which is not in the registry. ReLU's closed form is
# `sqrt(2 / (1 - 1/pi))`. A million samples check the scaled activation:


# %%
def mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


np.testing.assert_allclose(nfresnet.gamma("relu"), np.sqrt(2 / (1 - 1 / np.pi)), rtol=1e-12)
mean, variance = nfresnet.gaussian_moments(mish)
print(f"Mish on N(0, 1): mean {mean:.5f}, variance {variance:.5f}")
print(f"gamma(mish) = {nfresnet.gamma(mish):.5f}")
samples = jax.random.normal(jax.random.key(2), (1_000_000,))
empirical = float(jnp.var(nfresnet.scaled_activation(mish)(samples)))
print(f"Var[gamma * mish(x)] over 1e6 samples: {empirical:.4f}")
assert abs(empirical - 1.0) < 0.01


# %% [markdown]
# Models take the callable directly (`nfresnet.register_activation("mish", mish)`
# would make it available by name, e.g. in configs). A small NF-ResNet-18 with Mish:


# %%
def mish_resnet(x):
  return nfresnet.NFResNet(10, depth=18, width=0.25, stem="cifar", activation=mish)(x, False)


x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
small = nfresnet.draw_params(mish_resnet, jax.random.key(0), x)
logits = hk.transform(mish_resnet).apply(small, None, x)
print(f"NF-ResNet-18 with Mish: {nfresnet.count_params(small):,} parameters")
assert logits.shape == (4, 10)
