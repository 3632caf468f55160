"""The torch side of ``benchmarks.peers``: times timm models on request, one JSON line each way.

Runs in the side environment (torch and timm, no JAX): ``<venv>/bin/python -m
benchmarks.peers_torch --threads=N``. It imports nothing of the repository but
``benchmarks.make_timm_fixtures.import_timm`` (numpy only), so it needs no JAX.

Protocol (stdin requests, stdout replies, one JSON object per line; every reply has
``ok``, and ``error`` when it is false):

- at start it sends ``{"ok": true, "ready": true, "torch": ..., "timm": ..., "threads": N}``;
- ``{"op": "prepare", "case": NAME, "spec": MODEL, "warmup": W}`` builds the timm model
  that ``MODEL`` describes (``name``, ``kwargs``, ``in_chans``, ``num_classes``, ``cifar_stem``,
  ``resolution``, ``batch_size``, ``mode``), its optimizer and a random batch, runs ``W``
  untimed steps and replies with ``params`` (the parameter count);
- ``{"op": "time", "case": NAME, "steps": N}`` runs ``N`` steps, each timed on its own,
  and replies with ``step_times_s``;
- ``{"op": "release", "case": NAME}`` drops the case; ``{"op": "quit"}`` ends the worker.

A training step is the one of ``experiments.steps`` written in torch: forward in training
mode, softmax cross-entropy with label smoothing 0.1, backward, SGD with Nesterov momentum
0.9 and weight decay 5e-5 (on every parameter), float32. An evaluation step is the forward
pass in eval mode under ``torch.inference_mode``. Nothing else writes to stdout: prints of
the libraries go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

LABEL_SMOOTHING = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-5
LEARNING_RATE = 0.1


def to_cifar_stem(model: Any, nn: Any) -> None:
  """Turns a timm stem into the CIFAR stem: one 3x3 stride-1 conv, no pooling.

  timm's ``ResNet`` gets a new 3x3 ``conv1`` of the same width and no max pool; timm's
  ``NormFreeNet`` built with ``stem_type="3x3_pool"`` keeps its 3x3 stem conv at stride 1
  and drops the pool (with the pool in the config the first stage has stride 1, as ours).
  """
  if hasattr(model, "conv1") and hasattr(model, "maxpool"):
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return
  stem = getattr(model, "stem", None)
  conv = getattr(stem, "conv", None)
  if conv is None or tuple(conv.kernel_size) != (3, 3) or not hasattr(stem, "pool"):
    raise ValueError(f"no CIFAR stem for {type(model).__name__}: needs stem_type='3x3_pool'")
  conv.stride = (1, 1)
  stem.pool = nn.Identity()


def build_model(timm: Any, torch: Any, spec: dict[str, Any]) -> Any:
  """The timm model of ``spec`` with random weights."""
  model = timm.create_model(
    spec["name"],
    pretrained=False,
    num_classes=spec["num_classes"],
    in_chans=spec["in_chans"],
    **spec.get("kwargs", {}),
  )
  if spec.get("cifar_stem"):
    to_cifar_stem(model, torch.nn)
  return model


def make_step(torch: Any, model: Any, spec: dict[str, Any], seed: int = 0) -> Callable[[], float]:
  """A function running one training or evaluation step of ``model`` and timing it."""
  gen = torch.Generator().manual_seed(seed)
  size, batch = spec["resolution"], spec["batch_size"]
  images = torch.randn((batch, spec["in_chans"], size, size), generator=gen)
  labels = torch.randint(0, spec["num_classes"], (batch,), generator=gen)
  if spec["mode"] == "eval":
    model.eval()

    def eval_step() -> float:
      start = time.perf_counter()
      with torch.inference_mode():
        model(images)
      return time.perf_counter() - start

    return eval_step
  model.train()
  optimizer = torch.optim.SGD(
    model.parameters(),
    lr=LEARNING_RATE,
    momentum=MOMENTUM,
    nesterov=True,
    weight_decay=WEIGHT_DECAY,
  )
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)

  def train_step() -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start

  return train_step


class Worker:
  """The prepared cases and the handlers of the protocol's requests."""

  def __init__(self, timm: Any, torch: Any):
    self.timm, self.torch = timm, torch
    self.steps: dict[str, Callable[[], float]] = {}

  def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
    model = build_model(self.timm, self.torch, request["spec"])
    step = make_step(self.torch, model, request["spec"])
    for _ in range(int(request.get("warmup", 1))):
      step()
    self.steps[request["case"]] = step
    return {"params": sum(p.numel() for p in model.parameters())}

  def time(self, request: dict[str, Any]) -> dict[str, Any]:
    step = self.steps[request["case"]]
    return {"step_times_s": [step() for _ in range(int(request["steps"]))]}

  def release(self, request: dict[str, Any]) -> dict[str, Any]:
    self.steps.pop(request["case"], None)
    return {}

  def handle(self, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request (errors are replies, not exits)."""
    handler = {"prepare": self.prepare, "time": self.time, "release": self.release}
    op = request.get("op")
    if op not in handler:
      return {"ok": False, "error": f"unknown op {op!r}; allowed: {', '.join(handler)}, quit"}
    try:
      return {"ok": True, **handler[op](request)}
    except Exception as error:  # noqa: BLE001 - the caller reports the case as failed.
      message = f"{type(error).__name__}: {error}".splitlines()[0]
      return {"ok": False, "error": message}


def send(out: Any, reply: dict[str, Any]) -> None:
  out.write(json.dumps(reply) + "\n")
  out.flush()


def serve(worker: Worker, lines: Any, out: Any) -> None:
  """Answers requests from ``lines`` until ``quit`` or end of input."""
  for line in lines:
    if not line.strip():
      continue
    request = json.loads(line)
    if request.get("op") == "quit":
      return
    send(out, worker.handle(request))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--check", action="store_true", help="import torch and timm, print versions")
  args = parser.parse_args(argv)
  protocol_out, sys.stdout = sys.stdout, sys.stderr  # Library prints must not break the protocol.
  from benchmarks.make_timm_fixtures import import_timm  # noqa: PLC0415

  timm, torch = import_timm()
  torch.set_num_threads(args.threads)
  hello = {"ok": True, "ready": True, "torch": torch.__version__, "timm": timm.__version__}
  send(protocol_out, {**hello, "threads": torch.get_num_threads()})
  if not args.check:
    serve(Worker(timm, torch), sys.stdin, protocol_out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
