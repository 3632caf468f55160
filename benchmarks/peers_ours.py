"""Our side of ``benchmarks.peers``: the jitted step of a case, compiled and warmed up.

An ImageNet-shaped case is ``benchmarks.workload``'s real train or eval step; a Table 1
case (``study="table1"``) is the step that ``experiments.builder`` builds from the study's
config (``experiments/configs/fashion_mnist.py``) at the case's depth and batch, float32,
no learning-rate warmup. ``prepare_ours`` compiles it, runs the untimed steps and returns
the timed step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import throughput, workload
from benchmarks.peers_cases import PeerCase
from experiments import builder, steps
from experiments.configs import fashion_mnist


def study_config(case: PeerCase):
  """The study's experiment config at the case's depth, batch and step count."""
  short = "nf" if case.model == "nf_resnet" else "bn"
  config = fashion_mnist.get_config(f"model={short},depth={case.depth}")
  config.train.update(
    batch_size=case.batch_size,
    eval_batch_size=case.batch_size,
    num_steps=workload.STEPS_PER_RUN,
    compute_dtype="float32",
  )
  config.optimizer.warmup_steps = 0
  study = (config.model.width, config.model.stem, config.data.image_size)
  if study != (case.width, case.stem, case.resolution):
    raise ValueError(f"{case.name}: the study config has width, stem, size {study}")
  return config


def study_workload(case: PeerCase) -> workload.Workload:
  """The study config's real step (``experiments.builder``) on ``case``'s input shape."""
  experiment = builder.build(
    study_config(case), case.num_classes, workload.STEPS_PER_RUN * case.batch_size
  )
  shape = (case.resolution, case.resolution, case.channels)
  sharded = steps.batch_sharding(experiment.mesh)
  abstract = {
    "image": jax.ShapeDtypeStruct((case.batch_size, *shape), jnp.float32, sharding=sharded),
    "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32, sharding=sharded),
  }
  if case.mode == "eval":
    abstract["mask"] = jax.ShapeDtypeStruct((case.batch_size,), jnp.bool_, sharding=sharded)

  def make_args():
    key = jax.random.key(1)
    batch = {
      "image": jax.random.normal(key, abstract["image"].shape),
      "label": jax.random.randint(key, abstract["label"].shape, 0, case.num_classes),
    }
    if "mask" in abstract:
      batch["mask"] = jnp.ones(abstract["mask"].shape, jnp.bool_)
    return experiment.init_state(shape), jax.device_put(batch, sharded)

  step = experiment.train_step if case.mode == "train" else experiment.eval_step
  return workload.Workload(step, (experiment.abstract_state(shape), abstract), make_args)


def our_workload(case: PeerCase) -> workload.Workload:
  """The jitted step of our side of ``case``."""
  if case.study:
    return study_workload(case)
  fields = dict(stem=case.stem, num_classes=case.num_classes)
  return workload.build(
    workload.Case(case.model, case.depth, case.resolution, case.batch_size, case.mode, **fields)
  )


def prepare_ours(case: PeerCase, warmup: int) -> tuple[Callable[[], float], dict[str, Any]]:
  """Compiles and warms up our step; ``(timed step, {compile_s, params})``."""
  built = our_workload(case)
  start = time.perf_counter()
  compiled = built.step.lower(*built.abstract_args).compile()
  compile_s = time.perf_counter() - start
  params = sum(x.size for x in jax.tree.leaves(built.abstract_args[0].params))
  step = throughput.stepper(case, built, compiled)
  for _ in range(warmup):
    step()
  return step, {"compile_s": compile_s, "params": int(params)}
