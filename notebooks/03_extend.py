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
# # Extending nfresnet: a new activation and a new residual block
#
# A new block subclasses `nfresnet.NFBlock`, which does the NF bookkeeping
# (pre-activation `g(x) / beta`, shortcut, stochastic depth, skip gain, `alpha`), and
# writes only its residual `branch` from library pieces: `self.conv` (a Scaled-WS
# `nfresnet.WSConv2D`) and `self.activation` (the model's gamma-scaled
# nonlinearity). `@hk.transparent` keeps parameter names like `stage1_block1/conv0`.
#
# The example: a shallow block, a 3x3 conv (with the block's stride) followed by a 1x1
# conv (half the 3x3 work of the basic block), with Mish `x tanh(softplus(x))` as the
# activation; the model scales it by its gamma (paper Section 4, "Determining
# nonlinearity-specific constants").
#
# **Editing.** This notebook is committed twice: as `notebooks/03_extend.py`,
# a [jupytext](https://jupytext.readthedocs.io) percent-format script (the reviewed,
# ruff-checked source), and as `notebooks/03_extend.ipynb`, paired with it
# through the header of the `.py` and committed with outputs cleared. Jupyter with
# jupytext installed (`pip install -e ".[test]"`) opens either file as a notebook and
# saves both. After editing a `.py` in an editor, resync with
# `jupytext --sync notebooks/*.py`; to rewrite an `.ipynb` from its `.py` without outputs:
# `jupytext --to ipynb notebooks/03_extend.py`.
# `python -m pytest -q tests/test_notebooks.py` runs the three notebooks and checks that
# each pair is in sync.

# %%
# %matplotlib inline
import functools
import tempfile

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import display

import nfresnet
from experiments import models
from experiments.checkpoint import load_trained
from experiments.configs import quickstart
from experiments.spp.plot import SPPRun, plot_spp
from experiments.train import train_and_evaluate


def mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


class ShallowBlock(nfresnet.NFBlock):
  """3x3 conv (stride) -> g -> 1x1 conv, then squeeze-excite if enabled."""

  @hk.transparent
  def branch(self, x, is_training):
    channels = self.spec.out_channels
    out = self.conv(channels, 3, stride=self.spec.stride, name="conv0")(x)
    out = self.conv(channels, 1, name="conv1")(self.activation(out))
    return self.squeeze_excite(out)


print(f"gamma(mish) = {nfresnet.gamma(mish):.5f}")

# %% [markdown]
# ## Plug it into the model
#
# `NFResNet(..., block=ShallowBlock, activation=mish)` lays the network out as usual
# (depth 18: two blocks per stage, widths 64-512 times `width`), builds every block
# with the new class and passes it `gamma(mish) * mish` as `self.activation`. A
# `functools.partial` fixes the two so the rest reads like any NF-ResNet:

# %%
ShallowNFResNet = functools.partial(nfresnet.NFResNet, block=ShallowBlock, activation=mish)
arch = dict(depth=18, width=0.25, stem="cifar")


def model_fn(x, is_training=False):
  return ShallowNFResNet(10, skip_gain_init=1.0, **arch)(x, is_training)


x = jax.random.normal(jax.random.key(0), (16, 16, 16, 1))
params = nfresnet.draw_params(model_fn, jax.random.key(0), x)
print(f"{nfresnet.count_params(params):,} parameters; stage2_block2:")
for name, value in sorted(params.items()):
  if "stage2_block2" in name:
    print(f"  {name}: {jax.tree.map(jnp.shape, value)}")
assert params["nf_resnet/stage2_block2/conv1"]["w"].shape == (1, 1, 32, 32)

# %% [markdown]
# ## Check its signal propagation
#
# With skip gains at 1 (the SPP setting), a well-built NF branch keeps about unit
# variance for unit-variance inputs, so the block outputs follow `1 + k alpha^2` and
# the residual variance stays near 1. A branch that broke this (a missing gamma, a
# conv without WS) would show here before any training. Mish, unlike ReLU, is not
# positively homogeneous, so gamma normalizes it exactly only for unit-Gaussian
# inputs; at this depth the drift is small. The SPP uses 32 px inputs: on smaller maps
# the zero padding of the 3x3 convs visibly lowers the last stage's variance.

# %%
gaussian = jax.random.normal(jax.random.key(1), (8, 32, 32, 1))
result = nfresnet.signal_propagation(model_fn, gaussian, rng=jax.random.key(1))
analytic = nfresnet.expected_signal_variance(18, 0.2)
title = "NF-ResNet-18 with shallow Mish blocks at initialization, 32 px"
display(plot_spp([SPPRun("shallow block, Mish", "", arch, result, analytic)], title=title))
print("variance / analytic:", np.round(result["avg_var"] / analytic, 2))
print("residual variance  :", np.round(result["residual_var"], 2))
assert np.all(np.abs(result["avg_var"] / analytic - 1) < 0.15)
assert np.all(np.abs(result["residual_var"] - 1) < 0.4)

# %% [markdown]
# ## Train it
#
# `experiments.models.register_model` adds a constructor to the training registry
# under a name, so a config selects it like a built-in model (`config.model_name`)
# and `config.model` holds its keyword arguments (here the quick start's depth,
# width and stem). The run uses the quick-start recipe on the embedded digits (16 px,
# 10 classes) for 300 steps of 32 images.

# %%
models.register_model("nf_resnet_shallow", ShallowNFResNet)
config = quickstart.get_config()
config.model_name = "nf_resnet_shallow"
config.train.batch_size = 32
config.train.num_steps = 300
config.train.log_every = 100
config.train.progress_bar = False
config.optimizer.warmup_epochs = 0.0
config.optimizer.warmup_steps = 20
workdir = tempfile.mkdtemp(prefix="nfresnet_shallow_")
_, metrics = train_and_evaluate(config, workdir)
print(f"test accuracy after {metrics['step']} steps: {metrics['eval/accuracy']:.3f}")
assert metrics["eval/accuracy"] > 0.9

# %% [markdown]
# The checkpoint records the registered name and its keyword arguments;
# `load_trained` rebuilds the model in any process where the name is registered.
# The trained network classifies the first test digits:

# %%
from experiments.spp.cli import make_inputs

trained = load_trained(workdir)
images = make_inputs("digits", 16, config.data.image_size, seed=0)
logits, _ = hk.transform_with_state(trained.model_fn).apply(
  trained.params, trained.state, None, images, False
)
print(trained.config.model_name, dict(trained.config.model), "logits", logits.shape)
print("predicted:", np.asarray(jnp.argmax(logits, axis=-1)))
assert logits.shape == (16, 10)
