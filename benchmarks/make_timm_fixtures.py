"""Writes the timm fixtures of ``tests/test_weights_timm.py``: small random timm NF models.

Each fixture ``tests/fixtures/timm/<name>.safetensors`` holds the state dict of a
shrunken timm model with random weights (every parameter drawn, so no zero-initialised
gain hides a conversion error), plus ``fixture.input`` (NHWC float32 images) and
``fixture.logits`` (timm's eval-mode logits for them). Its metadata names the timm
model and the keyword arguments that shrink it, our model and its arguments, and the
timm and torch versions.

Used to write the committed fixtures: timm 1.0.31, torch 2.13.0+cpu, safetensors 0.8.0,
numpy 2.4.6, Python 3.11, with these timm models (``timm.create_model`` overrides its
``NfCfg`` fields with keyword arguments):

- ``nf_resnet50`` with ``channels=(16, 32, 64, 128), stem_chs=4, ch_div=4,
  same_padding=True, num_classes=10`` -> ``NFResNet(10, 50, width=0.0625,
  avg_down=True)``; 34 px inputs. ``same_padding=True`` gives timm's convs our
  "SAME" padding, and at 34 px the stem max pool's symmetric padding coincides
  with "SAME" (its 17 px input is odd), so the logits can match exactly; timm's
  real ``nf_resnet50`` pads symmetrically (see ``nfresnet.weights_timm``).
- ``dm_nfnet_f0`` with ``channels=(16, 32, 96, 96), group_size=8,
  num_features=192, num_classes=10`` -> ``NFNet(10, "F0", width=0.0625,
  group_width=8)``; 48 px inputs (stage sizes 12, 6, 3, 2: the odd 3 exercises the
  padded average pool).

Run it in a side environment, never a dependency of the package (``pip install
-e ".[peers]"`` declares the same)::

  python3 -m venv .venv-peers
  .venv-peers/bin/pip install torch==2.13.0 timm safetensors numpy absl-py
  .venv-peers/bin/python -m benchmarks.make_timm_fixtures

timm imports torchvision; the torchvision wheel pip picks for torch 2.13.0 may be a CUDA
build whose compiled ops cannot load next to the CPU torch, and then its import fails
registering ``torchvision::nms``. timm's NF models use none of those ops, so this
script declares placeholder schemas for the two ops that torchvision registers
unconditionally when (and only when) its extension did not load.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any

import numpy as np

FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "timm"
MAX_BYTES = 2 * 1024 * 1024
INPUT_KEY, LOGITS_KEY = "fixture.input", "fixture.logits"


@dataclasses.dataclass(frozen=True)
class Fixture:
  """One timm model, how to shrink it, and our model that imports it.

  Attributes:
    name: the timm model name (``timm.create_model``).
    timm_kwargs: ``NfCfg`` overrides and ``num_classes`` that shrink it.
    model_name: our registry name of the importing model.
    model_kwargs: its constructor arguments (besides ``num_classes``).
    image_size: side of the random input images.
    batch: number of input images.
    seed: torch seed of the weights (``seed + 1``: of the images).
  """

  name: str
  timm_kwargs: dict[str, Any]
  model_name: str
  model_kwargs: dict[str, Any]
  image_size: int
  batch: int = 2
  seed: int = 0


FIXTURES = (
  Fixture(
    "nf_resnet50",
    dict(channels=(16, 32, 64, 128), stem_chs=4, ch_div=4, same_padding=True, num_classes=10),
    "nf_resnet",
    dict(depth=50, width=0.0625, avg_down=True),
    image_size=34,
  ),
  Fixture(
    "dm_nfnet_f0",
    dict(channels=(16, 32, 96, 96), group_size=8, num_features=192, num_classes=10),
    "nfnet",
    dict(variant="F0", width=0.0625, group_width=8),
    image_size=48,
  ),
)


_PLACEHOLDER_OPS: list = []  # Keeps the placeholder torchvision op library alive.


def import_timm():
  """``import timm``, working around a torchvision whose compiled ops cannot load."""
  import torch  # noqa: PLC0415

  try:
    import torchvision  # noqa: F401, PLC0415
  except RuntimeError:  # "operator torchvision::nms does not exist"
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
      del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _PLACEHOLDER_OPS.append(library)
  import timm  # noqa: PLC0415

  return timm, torch


def randomize(model, torch, seed: int) -> None:
  """Draws every parameter: kernels ~ N(0, 1/fan_in), gains U(0.5, 1.5), biases N(0, 0.1^2),
  skip gains U(0.5, 1), classifier N(0, 1/fan_in) (logits of order 1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("skipinit_gain"):
        p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
      elif name.endswith("gain"):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def make(fixture: Fixture, out_dir: pathlib.Path) -> pathlib.Path:
  """Builds, randomizes and runs one timm model; writes its fixture file."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  timm, torch = import_timm()
  model = timm.create_model(fixture.name, pretrained=False, **fixture.timm_kwargs).eval()
  randomize(model, torch, fixture.seed)
  gen = torch.Generator().manual_seed(fixture.seed + 1)
  size = fixture.image_size
  images = torch.randn((fixture.batch, 3, size, size), generator=gen)
  with torch.no_grad():
    logits = model(images)
  tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  tensors[INPUT_KEY] = images.permute(0, 2, 3, 1).contiguous().numpy()
  tensors[LOGITS_KEY] = logits.numpy()
  metadata = {
    "timm_model": fixture.name,
    "timm_kwargs": json.dumps(fixture.timm_kwargs),
    "model_name": fixture.model_name,
    "model_kwargs": json.dumps(fixture.model_kwargs),
    "timm_version": timm.__version__,
    "torch_version": torch.__version__,
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{fixture.name}.safetensors"
  save_file(tensors, str(path), metadata=metadata)
  size_bytes = path.stat().st_size
  if size_bytes >= MAX_BYTES:
    raise SystemExit(f"error: {path} is {size_bytes:,} bytes, over the {MAX_BYTES:,} limit")
  print(f"{path}: {size_bytes:,} bytes, logits {tensors[LOGITS_KEY].shape}")
  return path


def main(argv: list[str] | None = None) -> int:
  from experiments.cli import UsageParser  # noqa: PLC0415 (needs absl-py in the side venv)

  names = [f.name for f in FIXTURES]
  parser = UsageParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", type=pathlib.Path, default=FIXTURE_DIR)
  parser.add_argument("names", nargs="*", help=f"fixtures to write (default all): {names}")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.names) - set(names))
  if unknown:
    parser.error(f"unknown fixture {unknown[0]!r}; allowed: {', '.join(names)}")
  for fixture in FIXTURES:
    if not args.names or fixture.name in args.names:
      make(fixture, args.out_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
