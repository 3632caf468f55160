"""The cases of ``benchmarks.peers``: each of our models and the timm model of the same shape.

``CASES`` holds, in order, the ImageNet-shaped pairs (our NF-ResNet-50 and BN-ResNet-50 vs
timm's ``nf_resnet50`` and ``resnet50``, train and eval, at 224 px batch 16 and 32 px batch
128) and the Table 1 study's networks (``TABLE1``), with the timm model and keyword arguments
that reshape it, or why timm cannot build it. ``select`` is ``--only``. Plain data: building
either side is ``benchmarks.peers_ours`` and ``benchmarks.peers_torch``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

TABLE1 = dict(
  study="table1",
  stem="cifar",
  width=0.25,
  channels=1,
  resolution=16,
  batch_size=128,
  num_classes=10,
)
"""The Table 1 study's networks (``experiments/configs/fashion_mnist.py``): Fashion-MNIST
(28x28x1) resized to 16 px, width 0.25, CIFAR stem, 10 classes, batch 128."""


@dataclasses.dataclass(frozen=True)
class PeerCase:
  """One of our models and the timm model of the same shape.

  Attributes:
    name: the case name (``--only`` matches substrings of it).
    model: our registry name, ``nf_resnet`` or ``resnet_v2``.
    depth: ResNet depth.
    mode: "train" or "eval".
    resolution: square input size.
    batch_size: images per step, both sides.
    steps: timed steps per round and side (``--steps`` replaces it).
    stem: "imagenet" or "cifar".
    width: channel multiplier.
    channels: input channels.
    num_classes: classifier outputs.
    study: "table1": our side is that study's config at this depth; None: ImageNet
      models through ``benchmarks.workload``.
    timm: ``timm.create_model`` name and keyword arguments (``name``, ``kwargs``,
      ``cifar_stem``; see ``benchmarks.peers_torch``), or None.
    no_timm: why timm cannot build this shape (``timm`` is None).
  """

  name: str
  model: str
  depth: int
  mode: str
  resolution: int = 224
  batch_size: int = 16
  steps: int = 2
  stem: str = "imagenet"
  width: float = 1.0
  channels: int = 3
  num_classes: int = 1000
  study: str | None = None
  timm: dict[str, Any] | None = None
  no_timm: str = ""

  def label(self) -> str:
    """Our side, e.g. ``nf_resnet-18 w0.25 16px 1ch b128 train``."""
    parts = [f"{self.model}-{self.depth}"]
    parts += [f"w{self.width:g}"] if self.width != 1.0 else []
    parts += [f"{self.resolution}px"]
    parts += [f"{self.channels}ch"] if self.channels != 3 else []
    return " ".join([*parts, f"b{self.batch_size}", self.mode])

  def timm_label(self) -> str:
    """The timm side: model name and the keyword arguments that reshape it."""
    if self.timm is None:
      return f"cannot build: {self.no_timm}"
    extra = [f"{k}={v}" for k, v in self.timm.get("kwargs", {}).items()]
    extra += ["CIFAR stem"] if self.timm.get("cifar_stem") else []
    return f"{self.timm['name']}({', '.join(extra)})" if extra else self.timm["name"]

  def timm_spec(self) -> dict[str, Any]:
    """The worker's ``prepare`` spec."""
    assert self.timm is not None, self.name
    shape = dict(in_chans=self.channels, num_classes=self.num_classes)
    shape.update(resolution=self.resolution, batch_size=self.batch_size, mode=self.mode)
    return {"kwargs": {}, "cifar_stem": False, **self.timm, **shape}


PAIRS_50 = (("nf_resnet", "nf_resnet50", "nf"), ("resnet_v2", "resnet50", "bn"))
"""(our model, timm model, name prefix) of the ImageNet-shaped cases."""


def imagenet_cases() -> list[PeerCase]:
  """NF-ResNet-50 vs timm ``nf_resnet50``, BN-ResNet-50 vs ``resnet50``; 224 px b16, 32 px b128."""
  cases = []
  for resolution, batch, train_steps, eval_steps in ((224, 16, 2, 3), (32, 128, 3, 5)):
    for ours, timm_name, short in PAIRS_50:
      for mode, count in (("train", train_steps), ("eval", eval_steps)):
        name = f"{short}50_{resolution}px_b{batch}_{mode}"
        timm = {"name": timm_name}
        cases.append(PeerCase(name, ours, 50, mode, resolution, batch, count, timm=timm))
  return cases


def table1_timm(model: str, depth: int) -> tuple[dict[str, Any] | None, str]:
  """The timm model of a Table 1 network, or why there is none."""
  if model == "resnet_v2":  # timm's ResNet (post-activation), widths scaled by 0.25.
    kwargs = {"channels": [16, 32, 64, 128], "stem_width": 16}
    return {"name": f"resnet{depth}", "kwargs": kwargs, "cifar_stem": True}, ""
  if depth == 26:  # Bottleneck blocks: timm's NormFreeNet, stage outputs 256..2048 x 0.25.
    kwargs = {"channels": [64, 128, 256, 512], "stem_chs": 16, "stem_type": "3x3_pool"}
    return {"name": "nf_resnet26", "kwargs": kwargs, "cifar_stem": True}, ""
  return None, "timm's NormFreeNet has bottleneck blocks only, no basic-block NF-ResNet-18"


def table1_cases() -> list[PeerCase]:
  """Table 1's NF- and BN-ResNet-18 and -26 (``TABLE1``), train and eval."""
  cases = []
  for ours, short in (("nf_resnet", "nf"), ("resnet_v2", "bn")):
    for depth in (18, 26):
      timm, why = table1_timm(ours, depth)
      for mode, count in (("train", 10), ("eval", 20)):
        name = f"table1_{short}{depth}_{mode}"
        case = PeerCase(name, ours, depth, mode, steps=count, timm=timm, no_timm=why, **TABLE1)
        cases.append(case)
  return cases


CASES: tuple[PeerCase, ...] = (*imagenet_cases(), *table1_cases())


def select(only: str | None) -> list[PeerCase]:
  """Cases whose name contains one of the comma-separated substrings of ``only``."""
  if only is None:
    return list(CASES)
  parts = [part for part in only.split(",") if part]
  return [case for case in CASES if any(part in case.name for part in parts)]
