"""``benchmarks.collectives``: the collectives of a training step, counted and explained.

A tiny ResNet-18 on 2 of the fake CPU devices. Lowered (before XLA merges anything):
one gradient all-reduce per parameter array for every model; per-device BN adds the
mean over devices of its moving statistics (4 arrays per BN layer: the EMA's hidden and
average values of the mean and the variance); cross-replica BN adds 4 all-reduces per
BN layer inside the computation (the batch mean and mean square forward, their
cotangents backward). Compiled, XLA's all-reduce combiner merges the gradients (and
moving statistics) into one all-reduce, but cross-replica BN keeps two per layer: each
layer's statistics are needed before the layer can go on.
"""

import types

import jax
import pytest

from benchmarks import collectives

ARGS = types.SimpleNamespace(devices=2, depth=18, resolution=8, batch_per_device=2, width=0.0625)
BN_LAYERS = 2 * 8 + 1  # Two per basic block, eight blocks, and the final BN.


@pytest.fixture(scope="module")
def rows():
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  return {
    name: collectives.measure(name, model, cross, ARGS, compiled=name != "BN-ResNet")
    for name, model, cross in (*collectives.MODELS, collectives.CROSS_REPLICA)
  }


def test_gradients_are_one_all_reduce_per_parameter_array(rows):
  for row in rows.values():
    grads = row["lowered"]["gradients"]
    assert grads["bytes"] == row["parameter_bytes"]
  nf = rows["NF-ResNet"]["lowered"]
  assert nf["bn statistics"]["ops"] == nf["bn moving averages"]["ops"] == 0


def test_batch_norm_adds_its_statistics(rows):
  per_device = rows["BN-ResNet"]["lowered"]
  cross = rows["BN-ResNet, cross-replica BN"]["lowered"]
  assert per_device["bn statistics"]["ops"] == 0
  assert per_device["bn moving averages"]["ops"] == 4 * BN_LAYERS
  assert cross["bn statistics"]["ops"] == 4 * BN_LAYERS
  assert cross["bn statistics"]["bytes"] == cross["bn moving averages"]["bytes"]


def test_compiled_cross_replica_bn_keeps_two_all_reduces_per_layer(rows):
  assert rows["NF-ResNet"]["compiled"]["all_reduce_ops"] == 1
  assert rows["BN-ResNet, cross-replica BN"]["compiled"]["all_reduce_ops"] == 2 * BN_LAYERS + 1


def test_projection_charges_bn_collectives_only_to_cross_replica_bn(rows):
  text = collectives.projection(list(rows.values()), macs_per_image=10**9)
  nf_lines = [line for line in text.splitlines() if line.startswith("| NF-ResNet |")]
  cross_lines = [line for line in text.splitlines() if "cross-replica" in line]
  assert nf_lines and all(line.endswith("| 0% |") for line in nf_lines)
  shares = [int(line.rsplit("|", 2)[1].strip().rstrip("%")) for line in cross_lines]
  assert all(share > 0 for share in shares)
