"""nfresnet: Normalizer-Free ResNets in JAX/Haiku."""

from setuptools import find_packages, setup

LIBRARY = ["jax>=0.7.0", "jaxlib>=0.7.0", "dm-haiku>=0.0.16", "numpy>=1.26"]
EXPERIMENTS = [
  "optax>=0.2.5",
  "chex>=0.1.90",
  "ml-collections>=1.0.0",
  "absl-py>=2.1",
  "orbax-checkpoint>=0.11.0",
  "etils[epath]>=1.7",  # experiments.paths: local paths and cloud URLs.
  "fsspec>=2024.2",
  "grain>=0.2.10",
  "pillow>=10.0",  # experiments.data.jpeg: JPEG decode and crop.
  "tensorflow-datasets>=4.9.9",
  "scikit-learn>=1.4",
  "matplotlib>=3.8",
  "tqdm>=4.66",
  "tensorboardX>=2.6.2",
]
WEIGHTS = ["safetensors>=0.4"]  # nfresnet.weights: timm checkpoints and our exports.
# Only to build TFDS datasets such as imagenet2012 (docs/pods.md); training never needs it.
PREPARE = ["tensorflow>=2.16", "tensorflow-datasets>=4.9.9"]
CLOUD = ["gcsfs>=2024.2"]  # gs:// workdirs for logs (etils.epath); orbax needs nothing more.
# Side environment that writes the timm test fixtures (benchmarks/make_timm_fixtures.py);
# never a dependency of the package.
PEERS = ["torch>=2.5", "timm>=1.0", "safetensors>=0.4"]
TEST = (
  EXPERIMENTS
  + WEIGHTS
  + [
    "pytest>=8.0",
    "ruff>=0.6",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "jupytext>=1.16",
  ]
)

setup(
  name="nfresnet",
  version="0.1.0",
  description="Normalizer-Free ResNets (Brock, De & Smith, ICLR 2021) in JAX/Haiku",
  packages=find_packages(include=["nfresnet", "nfresnet.*", "experiments", "experiments.*"]),
  python_requires=">=3.10",
  install_requires=LIBRARY,
  extras_require={
    "experiments": EXPERIMENTS,
    "weights": WEIGHTS,
    "prepare": PREPARE,
    "cloud": CLOUD,
    "peers": PEERS,
    "test": TEST,
  },
)
