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
# # Signal Propagation Plots
#
# An SPP feeds one batch through a network and records, at every residual block
# output, the average channel squared mean, the average channel variance, and the
# variance of the residual branch (paper Section 3). `nfresnet.signal_propagation`
# hooks into any model made of `nfresnet.ResidualBlock`s from outside (method
# interceptors), so no model code changes. Widths are a quarter of ResNet-50's and
# images 32 px (3x3 stem), so everything runs on a laptop CPU; the paper's 600-layer,
# 224 px plots (paper Figures 1 and 2) come from `python -m experiments.spp --figure=1`
# and `--figure=2`.
#
# **Editing.** This notebook is committed twice: as `notebooks/02_signal_propagation.py`,
# a [jupytext](https://jupytext.readthedocs.io) percent-format script (the reviewed,
# ruff-checked source), and as `notebooks/02_signal_propagation.ipynb`, paired with it
# through the header of the `.py` and committed with outputs cleared. Jupyter with
# jupytext installed (`pip install -e ".[test]"`) opens either file as a notebook and
# saves both. After editing a `.py` in an editor, resync with
# `jupytext --sync notebooks/*.py`; to rewrite an `.ipynb` from its `.py` without outputs:
# `jupytext --to ipynb notebooks/02_signal_propagation.py`.
# `python -m pytest -q tests/test_notebooks.py` runs the three notebooks and checks that
# each pair is in sync.

# %%
# %matplotlib inline
import tempfile

import jax
import numpy as np
from IPython.display import display

import nfresnet
from experiments.spp.plot import SPPRun, plot_spp

DEPTH, WIDTH, SIZE, BATCH, ALPHA = 50, 0.25, 32, 8, 0.2
common = dict(depth=DEPTH, width=WIDTH, stem="cifar")

# %% [markdown]
# ## NF vs BN vs He init, at initialization
#
# - **NF, Scaled WS**: the NF-ResNet with skip gains set to 1 (the paper's SPP
#   setting; training starts them at 0).
# - **NF, He init**: the same network with plain He-normal convs (a unit-gain stem
#   conv, He et al.'s first-layer rule) and unscaled ReLUs.
# - **BN, ReLU-BN-Conv**: ResNet-V2 with BatchNorm on batch statistics
#   (`is_training=True`).
#
# The dashed line is the analytic NF variance `1 + k alpha^2`.

# %%
models = {
  "NF, Scaled WS": lambda x: nfresnet.NFResNet(10, skip_gain_init=1.0, **common)(x, False),
  "NF, He init": lambda x: nfresnet.NFResNet(
    10, skip_gain_init=1.0, weight_standardization=False, **common
  )(x, False),
  "BN, ReLU-BN-Conv": lambda x: nfresnet.ResNetV2(10, order="relu_bn", conv_init="he", **common)(
    x, True
  ),
}
x = jax.random.normal(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
analytic = nfresnet.expected_signal_variance(DEPTH, ALPHA)
spp = {}
for label, fn in models.items():
  spp[label] = nfresnet.signal_propagation(fn, x, rng=jax.random.key(1))
runs = [
  SPPRun(label, label, common, result, analytic if label == "NF, Scaled WS" else None)
  for label, result in spp.items()
]
display(plot_spp(runs, title=f"ResNet-{DEPTH} (width {WIDTH}) at initialization, {SIZE} px"))

# %% [markdown]
# What the plot shows, checked in numbers:
#
# - NF with Scaled WS follows the analytic curve (within 15%: the zero padding of the
#   3x3 convs lowers the variance on the 4x4 maps of the last stage) and keeps the
#   squared mean small.
# - NF with He init shows the mean shift: the squared mean grows along the network
#   while the branches stay unnormalized.
# - ReLU-BN-Conv keeps the squared mean at zero, while the variance grows by the
#   residual variance of about 2 per block and resets at each transition.

# %%
nf, he, bn = (spp[label] for label in models)
ratio = nf["avg_var"] / analytic
print("NF Scaled WS variance / analytic:", np.round(ratio, 2))
last = {label: float(spp[label]["avg_sq_mean"][-1]) for label in models}
print("squared mean, last block:", {label: round(value, 4) for label, value in last.items()})
print("BN residual variance:", np.round(bn["residual_var"], 2))
assert np.all(np.abs(ratio - 1) < 0.15)
assert he["avg_sq_mean"][-1] > 20 * nf["avg_sq_mean"][-1]
assert np.all(np.abs(bn["residual_var"] - 2) < 0.25)

# %% [markdown]
# ## A trained checkpoint from the quick start
#
# The quick start (`docs/training.md`) trains an NF-ResNet-18 on scikit-learn's 8x8
# digits at 16 px. Here a half-width version trains for 150 steps of 32 images into a
# temporary workdir with `train_and_evaluate`, the function `python -m experiments.main` calls;
# `load_trained` reads it back.

# %%
from experiments.checkpoint import load_trained
from experiments.configs import quickstart
from experiments.spp.cli import make_inputs
from experiments.train import train_and_evaluate

config = quickstart.get_config()
config.model.width = 0.125
config.train.batch_size = 32
config.train.num_steps = 150
config.train.log_every = 50
config.train.progress_bar = False
config.optimizer.base_lr = 0.8
config.optimizer.warmup_epochs = 0.0
config.optimizer.warmup_steps = 10
workdir = tempfile.mkdtemp(prefix="nfresnet_quickstart_")
_, metrics = train_and_evaluate(config, workdir)
print(f"test accuracy after {metrics['step']} steps: {metrics['eval/accuracy']:.3f}")
trained = load_trained(workdir)
print(trained.config.model_name, dict(trained.config.model))

# %% [markdown]
# `trained.model_fn(x, is_training)` rebuilds the model; `signal_propagation` takes
# the trained `params`/`state`. The input is the first test batch of digits, and the
# same architecture is measured at initialization for comparison. Two things differ
# from the Gaussian plots above: the quick-start skip gains start at 0, so at
# initialization every block passes its input through (the curve changes only at the
# transition shortcuts); and real images are smooth, so the stem's zero-mean
# (standardized) filters keep only a fraction of their variance. Training moves the
# skip gains away from 0 and the variances towards the analytic scale.

# %%
images = make_inputs("digits", 32, config.data.image_size, seed=0)
measured = lambda x: trained.model_fn(x, False)
at_init = nfresnet.signal_propagation(measured, images, rng=jax.random.key(0))
after = nfresnet.signal_propagation(
  measured, images, rng=jax.random.key(0), params=trained.params, state=trained.state
)
curve = nfresnet.expected_signal_variance(18, ALPHA)
kwargs = dict(trained.config.model)
display(
  plot_spp(
    [
      SPPRun("at initialization", "init", kwargs, at_init, curve),
      SPPRun(f"trained {metrics['step']} steps", "trained", kwargs, after, curve),
    ],
    title="Quick-start NF-ResNet-18 (width 1/8) on digits",
  )
)
skip_gains = [float(v["skip_gain"]) for k, v in sorted(trained.params.items()) if "skip_gain" in v]
print("trained skip gains:", np.round(skip_gains, 3))
print("variance at init   :", np.round(at_init["avg_var"], 3))
print("variance trained   :", np.round(after["avg_var"], 3))
assert np.all(np.array(skip_gains) != 0.0)
assert not np.allclose(after["avg_var"], at_init["avg_var"], rtol=1e-2)
