"""nfresnet: Normalizer-Free ResNets in JAX/Haiku."""

from setuptools import find_packages, setup

LIBRARY = ["jax>=0.7.0", "jaxlib>=0.7.0", "dm-haiku>=0.0.16", "numpy>=1.26"]
EXPERIMENTS = [
  "optax>=0.2.5",
  "chex>=0.1.90",
  "ml-collections>=1.0.0",
  "absl-py>=2.1",
  "orbax-checkpoint>=0.11.0",
  "grain>=0.2.10",
  "tensorflow-datasets>=4.9.9",
  "scikit-learn>=1.4",
  "matplotlib>=3.8",
  "tqdm>=4.66",
  "tensorboardX>=2.6.2",
]
TEST = EXPERIMENTS + [
  "pytest>=8.0",
  "ruff>=0.6",
  "nbclient>=0.10",
  "nbformat>=5.10",
  "ipykernel>=6.29",
]

setup(
  name="nfresnet",
  version="0.1.0",
  description="Normalizer-Free ResNets (Brock, De & Smith, ICLR 2021) in JAX/Haiku",
  packages=find_packages(include=["nfresnet", "nfresnet.*", "experiments", "experiments.*"]),
  python_requires=">=3.10",
  install_requires=LIBRARY,
  extras_require={"experiments": EXPERIMENTS, "test": TEST},
)
