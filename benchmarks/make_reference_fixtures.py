"""Writes the authors'-format fixture of ``tests/test_weights_reference.py``: a tiny NFNet.

Runs the authors' own NFNet (``nfnets/nfnet.py`` of a deepmind-research checkout,
imported from ``--reference_dir``; nothing of it is copied here) as F0 at width 1/16
with groups of 8 channels (its variant table's ``group_width`` entry), draws every
parameter at random (no zero skip gain or unit gain hides a conversion error),
and saves:

- ``tests/fixtures/reference/nfnet_f0_tiny.pkl``: the parameter tree, a plain
  pickle (protocol 4) of ``{"NFNet/~/module": {"w": ndarray, ...}}``, as the
  released ``F0_haiku.npz`` files are pickles of such trees;
- ``tests/fixtures/reference/nfnet_f0_tiny.logits.npz``: ``input`` (NHWC float32
  images, 48 px) and ``logits`` (the reference model's eval-mode logits).

Our ``NFNet(10, "F0", width=0.0625, group_width=8, reference_gammas=True)`` must
reproduce the logits from ``nfresnet.weights.load_params`` of the pickle.

Written with deepmind-research commit d8df4155dc72fc3dfff9f857412168993348ca23,
dm-haiku 0.0.17, jax 0.10 (CPU)::

  python -m benchmarks.make_reference_fixtures --reference_dir=/path/to/deepmind-research
"""

from __future__ import annotations

import pathlib
import pickle
import sys

import numpy as np

FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"
NAME = "nfnet_f0_tiny"
WIDTH, GROUP_WIDTH, NUM_CLASSES, IMAGE_SIZE, BATCH = 0.0625, 8, 10, 48, 2


def randomize(params: dict, rng: np.random.Generator) -> dict:
  """Kernels N(0, 1/fan_in), gains U(0.5, 1.5), biases N(0, 0.1^2), skip gains U(0.5, 1)."""
  out = {}
  for module, leaves in params.items():
    out[module] = {}
    for name, leaf in leaves.items():
      shape = np.shape(leaf)
      if name == "skip_gain":
        value = rng.uniform(0.5, 1.0, shape)
      elif name == "gain":
        value = rng.uniform(0.5, 1.5, shape)
      elif name in ("bias", "b"):
        value = rng.normal(0.0, 0.1, shape)
      else:
        value = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[:-1]))
      out[module][name] = value.astype(np.float32)
  return out


def main(argv: list[str] | None = None) -> int:
  import haiku as hk  # noqa: PLC0415
  import jax  # noqa: PLC0415

  from experiments.cli import UsageParser  # noqa: PLC0415

  parser = UsageParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference_dir", type=pathlib.Path, required=True)
  parser.add_argument("--out_dir", type=pathlib.Path, default=FIXTURE_DIR)
  args = parser.parse_args(argv)
  if not (args.reference_dir / "nfnets" / "nfnet.py").is_file():
    parser.error(f"--reference_dir={args.reference_dir} has no nfnets/nfnet.py")
  sys.path.insert(0, str(args.reference_dir))
  from nfnets import nfnet  # noqa: PLC0415 (the authors' code, from the checkout)

  variants = dict(nfnet.NFNet.variant_dict)
  variants["F0"] = {**variants["F0"], "group_width": [GROUP_WIDTH] * 4}
  nfnet.NFNet.variant_dict = variants

  def forward(x):
    return nfnet.NFNet(NUM_CLASSES, "F0", width=WIDTH)(x, is_training=False)["logits"]

  model = hk.transform(forward)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  params = jax.device_get(model.init(jax.random.PRNGKey(0), images))
  params = randomize({k: dict(v) for k, v in params.items()}, rng)
  logits = np.asarray(model.apply(params, None, images))
  args.out_dir.mkdir(parents=True, exist_ok=True)
  with open(args.out_dir / f"{NAME}.pkl", "wb") as f:
    pickle.dump(params, f, protocol=4)
  np.savez(args.out_dir / f"{NAME}.logits.npz", input=images, logits=logits)
  for path in sorted(args.out_dir.glob(f"{NAME}*")):
    print(f"{path}: {path.stat().st_size:,} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
