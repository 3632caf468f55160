"""Measured matrix-multiply peak: FLOP/s of ``jnp.dot`` on large square matrices.

``python -m benchmarks.peak [--size=2048] [--dtype=float32|bfloat16] [--repeats=5] [--json]``.
The best of several timed repeats after a warm-up is the peak that
``benchmarks.throughput`` reports achieved FLOP/s against (``2 * n**3`` FLOPs
per product).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def matmul_peak(size: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
  """Best FLOP/s of ``size x size`` by ``size x size`` products in ``dtype``.

  Args:
    size: matrix side.
    dtype: "float32" or "bfloat16".
    repeats: timed products after one warm-up.

  Returns:
    FLOP/s, counting ``2 * size**3`` per product.
  """
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(size, size)), DTYPES[dtype])
  b = jnp.asarray(rng.normal(size=(size, size)), DTYPES[dtype])
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def main(argv: list[str] | None = None) -> int:
  parser = cli.UsageParser(prog="python -m benchmarks.peak", description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=cli.positive_int, default=2048)
  parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
  parser.add_argument("--repeats", type=cli.positive_int, default=5, help="timed products")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  flops_per_s = matmul_peak(args.size, args.dtype, args.repeats)
  if args.json:
    print(json.dumps({"size": args.size, "dtype": args.dtype, "flops_per_s": flops_per_s}))
  else:
    print(f"{args.dtype} {args.size}x{args.size} matmul: {flops_per_s / 1e9:.1f} GFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
