"""Per-operation CPU timings: the library's forms against the textbook ones, interleaved.

``python -m benchmarks.cpu_ops [--only=products,ws,pool] [--rounds=7]`` times forward plus
gradient of three operations, each in the form ``nfresnet`` uses and in the textbook form it
replaces (same values, float32 summation order aside; benchmarks/NOTES.md, "Training step on
CPU"):

- ``products``: a 1x1 convolution as ``nfresnet.conv_lowering.pixel_product`` (one 2-D
  product of ``(N*H*W, C)`` pixels) against ``jnp.dot`` on the 4-D NHWC array;
- ``ws``: ``nfresnet.standardize_kernel`` against Scaled WS written over the kernel's leading
  axes and differentiated by JAX;
- ``pool``: ``nfresnet.pooling.max_pool`` against ``hk.max_pool`` (3x3, stride 2, SAME).

Each case alternates the two forms for ``--rounds`` rounds (ABAB) and prints the median time
of each and the median ratio ours / textbook. Nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from nfresnet import pooling
from nfresnet.conv_lowering import pixel_product
from nfresnet.ws_conv import WS_EPSILON, standardize_kernel

KINDS = ("products", "ws", "pool")


def textbook_product(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.dot(x, w)


def textbook_standardize(kernel: jax.Array, gain: jax.Array) -> jax.Array:
  """Scaled WS as written in the paper (Section 4.2), differentiated by JAX."""
  fan_in = np.prod(kernel.shape[:-1])
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, WS_EPSILON)) * gain


def textbook_pool(x: jax.Array) -> jax.Array:
  return hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")


@dataclasses.dataclass(frozen=True)
class OpCase:
  """One operation at one shape: our form, the textbook form and how to make inputs."""

  kind: str
  label: str
  ours: Callable[..., jax.Array]
  textbook: Callable[..., jax.Array]
  shapes: tuple[tuple[int, ...], ...]


def cases() -> list[OpCase]:
  """The shapes of benchmarks/NOTES.md: NF-50 at 224 and 32 px, the Table 1 study's widths."""
  products = [(16, 56, 64, 256), (16, 56, 256, 64), (16, 28, 128, 512), (128, 8, 64, 256)]
  products += [(128, 8, 256, 64), (128, 16, 16, 64)]
  kernels = [(1, 1, 1024, 2048), (1, 1, 2048, 512), (3, 3, 512, 512), (3, 3, 64, 64)]
  pools = [(16, 112, 112, 64), (128, 16, 16, 64)]
  out = [
    OpCase(
      "products",
      f"1x1 conv b{n} {h}x{h} {ci}->{co}",
      pixel_product,
      textbook_product,
      ((n, h, h, ci), (ci, co)),
    )
    for n, h, ci, co in products
  ]
  out += [
    OpCase("ws", f"WS kernel {'x'.join(map(str, k))}", standardize_kernel,
           textbook_standardize, (k, k[-1:]))
    for k in kernels
  ]  # fmt: skip
  out += [
    OpCase("pool", f"max pool 3x3/2 b{s[0]} {s[1]}x{s[2]}x{s[3]}", pooling.max_pool,
           textbook_pool, (s,))
    for s in pools
  ]  # fmt: skip
  return out


def forward_and_gradient(fn: Callable[..., jax.Array], n_args: int) -> Callable[..., object]:
  """Jitted value and gradient (every argument) of ``sum(fn(*args) * cotangent)``."""

  def loss(*args):
    *inputs, cotangent = args
    return jnp.sum(fn(*inputs) * cotangent)

  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n_args))))


def inputs(case: OpCase) -> list[jax.Array]:
  """Random inputs of the case's shapes (gains near 1) and a cotangent of the output's shape."""
  keys = jax.random.split(jax.random.key(0), len(case.shapes) + 1)
  args = [jax.random.normal(k, s) for k, s in zip(keys, case.shapes, strict=False)]
  if case.kind == "ws":
    args[1] = 1.0 + 0.1 * args[1]
  out_shape = jax.eval_shape(case.ours, *args).shape
  return [*args, jax.random.normal(keys[-1], out_shape)]


def time_once(fn: Callable[..., object], args: Sequence[jax.Array]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(case: OpCase, rounds: int) -> dict[str, float]:
  """Median seconds of each form over ``rounds`` alternating calls, and their median ratio."""
  args = inputs(case)
  n = len(case.shapes)
  ours, textbook = forward_and_gradient(case.ours, n), forward_and_gradient(case.textbook, n)
  for fn in (ours, textbook):
    jax.block_until_ready(fn(*args))
  times = {"ours": [], "textbook": []}
  for _ in range(rounds):
    times["ours"].append(time_once(ours, args))
    times["textbook"].append(time_once(textbook, args))
  ratios = [a / b for a, b in zip(times["ours"], times["textbook"], strict=True)]
  return {
    "ours_s": float(np.median(times["ours"])),
    "textbook_s": float(np.median(times["textbook"])),
    "ratio": float(np.median(ratios)),
    "ratio_min": min(ratios),
    "ratio_max": max(ratios),
  }


def kinds_arg(text: str) -> tuple[str, ...]:
  """``--only``: a comma-separated subset of ``KINDS``."""
  chosen = tuple(part.strip() for part in text.split(",") if part.strip())
  bad = [k for k in chosen if k not in KINDS]
  if bad or not chosen:
    raise argparse.ArgumentTypeError(
      f"{text!r}: expected a comma-separated list of {', '.join(KINDS)}"
    )
  return chosen


def main(argv: list[str] | None = None) -> int:
  parser = cli.UsageParser(prog="python -m benchmarks.cpu_ops", description=__doc__.splitlines()[0])
  parser.add_argument("--only", type=kinds_arg, default=KINDS, help="operations to time")
  parser.add_argument("--rounds", type=cli.positive_int, default=7, help="alternating calls")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}")
  print("| operation | ours ms | textbook ms | ours / textbook |")
  print("| --- | ---: | ---: | ---: |")
  for case in cases():
    if case.kind not in args.only:
      continue
    r = measure(case, args.rounds)
    spread = f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
    print(f"| {case.label} | {1e3 * r['ours_s']:.2f} | {1e3 * r['textbook_s']:.2f} | {spread} |")
  print(f"load {os.getloadavg()[0]:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
