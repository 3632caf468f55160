"""Writes the notebooks of ``notebooks/`` from the cell sources below, outputs cleared.

Edit the cells here, then run ``python notebooks/build_notebooks.py``;
``tests/test_notebooks.py`` executes the written notebooks in fresh kernels.
"""

from __future__ import annotations

import pathlib

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

TOUR = [
  (
    "md",
    """# A tour of nfresnet

Normalizer-Free ResNets (Brock, De & Smith, ICLR 2021) replace BatchNorm by a
scaled residual `h_{i+1} = h_i + alpha * f_i(h_i / beta_i)`, Scaled Weight
Standardization and gamma-scaled activations. This notebook builds NF-ResNet-50 and
its BatchNorm baseline, counts their parameters and multiply-accumulates, runs a
forward pass, looks at the parameter tree and the beta/alpha schedule, and computes
gamma for a new activation. It runs in well under a minute on a laptop CPU.""",
  ),
  (
    "code",
    """import haiku as hk
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import nfresnet

print("jax", jax.__version__, "| haiku", hk.__version__, "| devices:", jax.devices())""",
  ),
  (
    "md",
    """## 1. NF-ResNet-50 and the BN-ResNet-V2-50 baseline

Every model is a Haiku module called as `model(x, is_training)` on NHWC images.
`jax.eval_shape` traces the initialization abstractly, so counting parameters of a
224 px network computes nothing. `count_flops` counts multiply-accumulates of the
conv and linear layers per image.""",
  ),
  (
    "code",
    """def nf_resnet50(x, is_training):
  return nfresnet.NFResNet(1000, depth=50)(x, is_training)


def bn_resnet50(x, is_training):
  return nfresnet.ResNetV2(1000, depth=50)(x, is_training)


image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
counts = {}
for name, fn in [("NF-ResNet-50", nf_resnet50), ("BN-ResNet-V2-50", bn_resnet50)]:
  model = hk.transform_with_state(fn)
  shapes, state = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, True), image)
  macs = nfresnet.count_flops(lambda x: fn(x, False), image.shape)
  counts[name] = nfresnet.count_params(shapes)
  print(
    f"{name:16s} {counts[name]:>11,} parameters  {macs / 1e9:.2f} GMACs at 224 px  "
    f"{nfresnet.count_params(state):,} BatchNorm statistics"
  )
assert counts["NF-ResNet-50"] == 25_557_048  # The reference NF-ResNet-50.""",
  ),
  (
    "md",
    """## 2. A forward pass

`hk.transform(...).init` runs every initializer op by op, which takes tens of
seconds for a ResNet-50 on a CPU; `nfresnet.draw_params` returns the same values
(same key sequence) in about a second. NF models have no state, so `hk.transform`
is enough. A batch of two 64 px images:""",
  ),
  (
    "code",
    """model = hk.transform(nf_resnet50)
x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
params = nfresnet.draw_params(lambda x: nf_resnet50(x, False), jax.random.key(0), x)
logits = jax.jit(model.apply, static_argnums=3)(params, None, x, False)
print("logits", logits.shape, logits.dtype, "std", float(logits.std()))
assert logits.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(logits)))""",
  ),
  (
    "md",
    """## 3. The parameter tree

Module names are stable (`stem`, `stage{s}_block{b}`, `conv0`, `classifier`):
optimizer masks, checkpoints and plots rely on them. Each Scaled-WS conv has a
weight `w`, a per-channel `gain` and a `bias`; each NF block has a scalar
`skip_gain` (SkipInit, zero at initialization).""",
  ),
  (
    "code",
    """print(len(params), "modules; the first block of stage 2 (a transition block):")
for module in sorted(params):
  if "stage2_block1" in module:
    for name, value in params[module].items():
      path = f"{module}/{name}".removeprefix("nf_resnet/")
      print(f"  {path:34s} {str(value.shape):18s} {value.size:>9,}")
weights, others = hk.data_structures.partition(lambda module, name, value: name == "w", params)
print(
  f"conv/linear weights: {nfresnet.count_params(weights):,}; "
  f"gains, biases, skip gains: {nfresnet.count_params(others):,}"
)""",
  ),
  (
    "md",
    """## 4. The beta/alpha schedule

Each block divides its input by `beta_i = sqrt(Var(h_i))`, the analytic standard
deviation of its input, and adds `alpha` times its branch. The expected variance
grows by `alpha^2` per block and resets to `1 + alpha^2` at each transition block,
whose shortcut sees the normalized input. The block specs hold both numbers:""",
  ),
  (
    "code",
    """block_type, stem_width, specs = nfresnet.resnet_specs(50, alpha=0.2)
print(f"{block_type} blocks, stem width {stem_width}")
print(f"{'block':14s} {'stride':>6s} {'channels':>9s} {'beta':>7s} {'E[Var] out':>10s}")
for spec in specs:
  print(
    f"{spec.name:14s} {spec.stride:>6d} {spec.out_channels:>9d} "
    f"{spec.beta:>7.4f} {spec.expected_var:>10.2f}"
  )
expected = nfresnet.expected_signal_variance(50, alpha=0.2)
np.testing.assert_allclose([spec.expected_var for spec in specs], expected)
np.testing.assert_allclose([spec.beta for spec in specs[1:]], np.sqrt(expected[:-1]))""",
  ),
  (
    "code",
    """fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, len(specs) + 1), expected, "o-", label="expected variance 1 + k alpha^2")
ax.plot(range(1, len(specs) + 1), [s.beta for s in specs], "s--", label="beta (input std)")
ax.set_xlabel("residual block")
ax.legend()
plt.show()""",
  ),
  (
    "md",
    """## 5. Gamma for a new activation

`gamma_g = 1 / sqrt(Var[g(x)])` for `x ~ N(0, 1)` makes `gamma * g(x)` unit-variance.
`nfresnet.gamma` computes it by quadrature for any elementwise function, e.g. Mish
`x tanh(softplus(x))`, which is not in the registry. ReLU's closed form is
`sqrt(2 / (1 - 1/pi))`. A million samples check the scaled activation:""",
  ),
  (
    "code",
    """def mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


np.testing.assert_allclose(nfresnet.gamma("relu"), np.sqrt(2 / (1 - 1 / np.pi)), rtol=1e-12)
mean, variance = nfresnet.gaussian_moments(mish)
print(f"Mish on N(0, 1): mean {mean:.5f}, variance {variance:.5f}")
print(f"gamma(mish) = {nfresnet.gamma(mish):.5f}")
samples = jax.random.normal(jax.random.key(2), (1_000_000,))
empirical = float(jnp.var(nfresnet.scaled_activation(mish)(samples)))
print(f"Var[gamma * mish(x)] over 1e6 samples: {empirical:.4f}")
assert abs(empirical - 1.0) < 0.01""",
  ),
  (
    "md",
    """Models take the callable directly (`nfresnet.register_activation("mish", mish)`
would make it available by name, e.g. in configs). A small NF-ResNet-18 with Mish:""",
  ),
  (
    "code",
    """def mish_resnet(x):
  return nfresnet.NFResNet(10, depth=18, width=0.25, stem="cifar", activation=mish)(x, False)


x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
small = nfresnet.draw_params(mish_resnet, jax.random.key(0), x)
logits = hk.transform(mish_resnet).apply(small, None, x)
print(f"NF-ResNet-18 with Mish: {nfresnet.count_params(small):,} parameters")
assert logits.shape == (4, 10)""",
  ),
]

SPP = [
  (
    "md",
    """# Signal Propagation Plots

An SPP feeds one batch through a network and records, at every residual block
output, the average channel squared mean, the average channel variance, and the
variance of the residual branch (SPEC section 5). `nfresnet.signal_propagation`
hooks into any model made of `nfresnet.ResidualBlock`s from outside (method
interceptors), so no model code changes. Widths are a quarter of ResNet-50's and
images 32 px (3x3 stem), so everything runs on a laptop CPU; the paper's figures
(600 layers, 224 px) come from `python -m experiments.spp --figure=2`.""",
  ),
  (
    "code",
    """%matplotlib inline
import tempfile

import jax
import numpy as np
from IPython.display import display

import nfresnet
from experiments.spp_plot import SPPRun, plot_spp

DEPTH, WIDTH, SIZE, BATCH, ALPHA = 50, 0.25, 32, 8, 0.2
common = dict(depth=DEPTH, width=WIDTH, stem="cifar")""",
  ),
  (
    "md",
    """## NF vs BN vs He init, at initialization

- **NF, Scaled WS**: the NF-ResNet with skip gains set to 1 (the paper's SPP
  setting; training starts them at 0).
- **NF, He init**: the same network with plain He-normal convs (a unit-gain stem
  conv, He et al.'s first-layer rule) and unscaled ReLUs.
- **BN, ReLU-BN-Conv**: ResNet-V2 with BatchNorm on batch statistics
  (`is_training=True`).

The dashed line is the analytic NF variance `1 + k alpha^2`.""",
  ),
  (
    "code",
    """models = {
  "NF, Scaled WS": lambda x: nfresnet.NFResNet(10, skip_gain_init=1.0, **common)(x, False),
  "NF, He init": lambda x: nfresnet.NFResNet(
    10, skip_gain_init=1.0, weight_standardization=False, **common
  )(x, False),
  "BN, ReLU-BN-Conv": lambda x: nfresnet.ResNetV2(10, order="relu_bn", **common)(x, True),
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
display(plot_spp(runs, title=f"ResNet-{DEPTH} (width {WIDTH}) at initialization, {SIZE} px"))""",
  ),
  (
    "md",
    """What the plot shows, checked in numbers:

- NF with Scaled WS follows the analytic curve (within 15%: the zero padding of the
  3x3 convs lowers the variance on the 4x4 maps of the last stage) and keeps the
  squared mean small.
- NF with He init shows the mean shift: the squared mean grows along the network
  while the branches stay unnormalized.
- ReLU-BN-Conv keeps the squared mean at zero, while the variance grows by the
  residual variance of about 2 per block and resets at each transition.""",
  ),
  (
    "code",
    """nf, he, bn = (spp[label] for label in models)
ratio = nf["avg_var"] / analytic
print("NF Scaled WS variance / analytic:", np.round(ratio, 2))
last = {label: float(spp[label]["avg_sq_mean"][-1]) for label in models}
print("squared mean, last block:", {label: round(value, 4) for label, value in last.items()})
print("BN residual variance:", np.round(bn["residual_var"], 2))
assert np.all(np.abs(ratio - 1) < 0.15)
assert he["avg_sq_mean"][-1] > 20 * nf["avg_sq_mean"][-1]
assert np.all(np.abs(bn["residual_var"] - 2) < 0.25)""",
  ),
  (
    "md",
    """## A trained checkpoint from the quick start

The quick start (`docs/training.md`) trains an NF-ResNet-18 on scikit-learn's 8x8
digits at 16 px. Here a half-width version trains for 150 steps of 32 images into a
temporary workdir with `train_and_evaluate`, the function `python -m experiments.main` calls;
`load_trained` reads it back.""",
  ),
  (
    "code",
    """from experiments.checkpoint import load_trained
from experiments.configs import quickstart
from experiments.spp import make_inputs
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
print(trained.config.model_name, dict(trained.config.model))""",
  ),
  (
    "md",
    """`trained.model_fn(x, is_training)` rebuilds the model; `signal_propagation` takes
the trained `params`/`state`. The input is the first test batch of digits, and the
same architecture is measured at initialization for comparison. Two things differ
from the Gaussian plots above: the quick-start skip gains start at 0, so at
initialization every block passes its input through (the curve changes only at the
transition shortcuts); and real images are smooth, so the stem's zero-mean
(standardized) filters keep only a fraction of their variance. Training moves the
skip gains away from 0 and the variances towards the analytic scale.""",
  ),
  (
    "code",
    """images = make_inputs("digits", 32, config.data.image_size, seed=0)
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
assert not np.allclose(after["avg_var"], at_init["avg_var"], rtol=1e-2)""",
  ),
]

EXTEND = [
  (
    "md",
    """# Extending nfresnet: a new activation and a new residual block

A new block subclasses `nfresnet.NFBlock`, which does the NF bookkeeping
(pre-activation `g(x) / beta`, shortcut, stochastic depth, skip gain, `alpha`), and
writes only its residual `branch` from library pieces: `self.conv` (a Scaled-WS
`nfresnet.WSConv2D`) and `self.activation` (the model's gamma-scaled
nonlinearity). `@hk.transparent` keeps parameter names like `stage1_block1/conv0`.

The example: a shallow block, a 3x3 conv (with the block's stride) followed by a 1x1
conv (half the 3x3 work of the basic block), with Mish `x tanh(softplus(x))` as the
activation; the model scales it by its gamma.""",
  ),
  (
    "code",
    """%matplotlib inline
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
from experiments.spp_plot import SPPRun, plot_spp
from experiments.train import train_and_evaluate


def mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


class ShallowBlock(nfresnet.NFBlock):
  \"\"\"3x3 conv (stride) -> g -> 1x1 conv, then squeeze-excite if enabled.\"\"\"

  @hk.transparent
  def branch(self, x, is_training):
    channels = self.spec.out_channels
    out = self.conv(channels, 3, stride=self.spec.stride, name="conv0")(x)
    out = self.conv(channels, 1, name="conv1")(self.activation(out))
    return self.squeeze_excite(out)


print(f"gamma(mish) = {nfresnet.gamma(mish):.5f}")""",
  ),
  (
    "md",
    """## Plug it into the model

`NFResNet(..., block=ShallowBlock, activation=mish)` lays the network out as usual
(depth 18: two blocks per stage, widths 64-512 times `width`), builds every block
with the new class and passes it `gamma(mish) * mish` as `self.activation`. A
`functools.partial` fixes the two so the rest reads like any NF-ResNet:""",
  ),
  (
    "code",
    """ShallowNFResNet = functools.partial(nfresnet.NFResNet, block=ShallowBlock, activation=mish)
arch = dict(depth=18, width=0.25, stem="cifar")


def model_fn(x, is_training=False):
  return ShallowNFResNet(10, skip_gain_init=1.0, **arch)(x, is_training)


x = jax.random.normal(jax.random.key(0), (16, 16, 16, 1))
params = nfresnet.draw_params(model_fn, jax.random.key(0), x)
print(f"{nfresnet.count_params(params):,} parameters; stage2_block2:")
for name, value in sorted(params.items()):
  if "stage2_block2" in name:
    print(f"  {name}: {jax.tree.map(jnp.shape, value)}")
assert params["nf_resnet/stage2_block2/conv1"]["w"].shape == (1, 1, 32, 32)""",
  ),
  (
    "md",
    """## Check its signal propagation

With skip gains at 1 (the SPP setting), a well-built NF branch keeps about unit
variance for unit-variance inputs, so the block outputs follow `1 + k alpha^2` and
the residual variance stays near 1. A branch that broke this (a missing gamma, a
conv without WS) would show here before any training. Mish, unlike ReLU, is not
positively homogeneous, so gamma normalizes it exactly only for unit-Gaussian
inputs; at this depth the drift is small. The SPP uses 32 px inputs: on smaller maps
the zero padding of the 3x3 convs visibly lowers the last stage's variance.""",
  ),
  (
    "code",
    """gaussian = jax.random.normal(jax.random.key(1), (8, 32, 32, 1))
result = nfresnet.signal_propagation(model_fn, gaussian, rng=jax.random.key(1))
analytic = nfresnet.expected_signal_variance(18, 0.2)
title = "NF-ResNet-18 with shallow Mish blocks at initialization, 32 px"
display(plot_spp([SPPRun("shallow block, Mish", "", arch, result, analytic)], title=title))
print("variance / analytic:", np.round(result["avg_var"] / analytic, 2))
print("residual variance  :", np.round(result["residual_var"], 2))
assert np.all(np.abs(result["avg_var"] / analytic - 1) < 0.15)
assert np.all(np.abs(result["residual_var"] - 1) < 0.4)""",
  ),
  (
    "md",
    """## Train it

`experiments.models.register_model` adds a constructor to the training registry
under a name, so a config selects it like a built-in model (`config.model_name`)
and `config.model` holds its keyword arguments (here the quick start's depth,
width and stem). The run uses the quick-start recipe on the embedded digits (16 px,
10 classes) for 300 steps of 32 images.""",
  ),
  (
    "code",
    """models.register_model("nf_resnet_shallow", ShallowNFResNet)
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
assert metrics["eval/accuracy"] > 0.9""",
  ),
  (
    "md",
    """The checkpoint records the registered name and its keyword arguments;
`load_trained` rebuilds the model in any process where the name is registered.
The trained network classifies the first test digits:""",
  ),
  (
    "code",
    """from experiments.spp import make_inputs

trained = load_trained(workdir)
images = make_inputs("digits", 16, config.data.image_size, seed=0)
logits, _ = hk.transform_with_state(trained.model_fn).apply(
  trained.params, trained.state, None, images, False
)
print(trained.config.model_name, dict(trained.config.model), "logits", logits.shape)
print("predicted:", np.asarray(jnp.argmax(logits, axis=-1)))
assert logits.shape == (16, 10)""",
  ),
]

NOTEBOOKS = {"01_tour.ipynb": TOUR, "02_signal_propagation.ipynb": SPP, "03_extend.ipynb": EXTEND}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
  """A notebook of markdown ("md") and code cells, no outputs, numbered cell ids."""
  make = {"md": v4.new_markdown_cell, "code": v4.new_code_cell}
  notebook = v4.new_notebook(
    cells=[make[kind](source, id=f"cell-{i}") for i, (kind, source) in enumerate(cells)]
  )
  notebook.metadata["kernelspec"] = KERNELSPEC
  notebook.metadata["language_info"] = {"name": "python"}
  return notebook


def main() -> None:
  for name, cells in NOTEBOOKS.items():
    notebook = build(cells)
    nbformat.validate(notebook)
    nbformat.write(notebook, HERE / name)
    print(f"wrote {HERE / name} ({len(cells)} cells)")


if __name__ == "__main__":
  main()
