"""Sweep entries and the paper's sweep grids, shared by every config file.

A sweep is what ``get_sweep(name)`` of a config file returns: a list of
``SweepEntry`` (a run name, the config argument that selects the model, and
dotted overrides such as ``{"train.seed": 3}``). The model goes through the
config argument rather than an override because each model family has its own
``config.model`` section (constructor kwargs); everything else is an override,
exactly what ``--config.train.seed=3`` would do on the command line.

Each config file calls the grid builders below with its own depths, seeds and
batch sizes, so ``table1`` means the same study on ImageNet and on
Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from experiments.configs import ConfigError
from experiments.configs.args import join_args

TABLE1_MODELS = ("nf", "bn", "skipinit", "fixup")  # Paper Table 1 columns.
ACTIVATIONS = ("relu", "silu", "gelu")  # Appendix: NF networks with other activations.
MEANSHIFT_MODELS = ("nf", "he", "bn")  # Figure 2's networks, trained (Scaled WS vs He init).
AGC_FIELD = "optimizer.agc_clip"


@dataclasses.dataclass(frozen=True)
class SweepEntry:
  """One run of a sweep.

  Attributes:
    name: directory name of the run under the sweep root (unique in the sweep).
    arg: config argument, e.g. ``"model=nf,depth=101,regularized"``.
    overrides: dotted config overrides, e.g. ``{"train.seed": 3}``.
    reuse: a finished run with the same config (a path relative to the sweep root, e.g. the
      tuning run at the chosen rate for seed 0); the sweep copies its ``config.json`` and
      ``metrics.jsonl`` instead of training again when the configs match.
  """

  name: str
  arg: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  reuse: str | None = None

  def with_arg(self, extra: str) -> SweepEntry:
    """The same entry with ``extra`` appended to its config argument (e.g. ``smoke``)."""
    return dataclasses.replace(self, arg=join_args(self.arg, extra))


def table1(
  depths: Sequence[int],
  seeds: int,
  models: Sequence[str] = TABLE1_MODELS,
  regularization: Sequence[bool] = (False, True),
) -> list[SweepEntry]:
  """Table 1: model x depth x {unregularized, regularized} x seeds."""
  entries = []
  for model in models:
    for depth in depths:
      for regularized in regularization:
        for seed in range(seeds):
          reg = ",regularized" if regularized else ""
          entries.append(
            SweepEntry(
              f"{model}{depth}{'_reg' if regularized else ''}_seed{seed}",
              f"model={model},depth={depth}{reg}",
              {"train.seed": seed},
            )
          )
  return entries


def table2(
  depth: int,
  batch_sizes: Iterable[int],
  seeds: int = 1,
  models: Sequence[str] = ("nf", "bn"),
  epochs: float | None = None,
) -> list[SweepEntry]:
  """Table 2: NF vs BN at each batch size, the same number of epochs (steps follow the batch).

  Args:
    depth: ResNet depth.
    batch_sizes: global batch sizes.
    seeds: seeds per cell.
    models: ``model=`` choices.
    epochs: training epochs of every entry; None keeps the config's.
  """
  length = {} if epochs is None else {"train.num_epochs": epochs}
  return [
    SweepEntry(
      f"{model}{depth}_batch{batch}_seed{seed}",
      f"model={model},depth={depth}",
      {"train.batch_size": batch, "train.seed": seed, **length},
    )
    for model in models
    for batch in batch_sizes
    for seed in range(seeds)
  ]


def depth_sweep(
  depths: Sequence[int], seeds: int = 1, models: Sequence[str] = ("nf", "bn")
) -> list[SweepEntry]:
  """Accuracy against depth, NF vs BN, unregularized."""
  return [
    SweepEntry(f"{model}{depth}_seed{seed}", f"model={model},depth={depth}", {"train.seed": seed})
    for model in models
    for depth in depths
    for seed in range(seeds)
  ]


def activation_sweep(depth: int, seeds: int = 1) -> list[SweepEntry]:
  """NF networks with ReLU, SiLU and GELU, each scaled by its own gamma."""
  return [
    SweepEntry(
      f"nf{depth}_{activation}_seed{seed}",
      f"model=nf,depth={depth},activation={activation}",
      {"train.seed": seed},
    )
    for activation in ACTIVATIONS
    for seed in range(seeds)
  ]


def meanshift_sweep(depth: int, seeds: int = 1) -> list[SweepEntry]:
  """Scaled WS vs the same NF network with He init and no WS vs BN (Figure 2, trained)."""
  return [
    SweepEntry(f"{model}{depth}_seed{seed}", f"model={model},depth={depth}", {"train.seed": seed})
    for model in MEANSHIFT_MODELS
    for seed in range(seeds)
  ]


def table3(variants: Sequence[str], seeds: int = 1) -> list[SweepEntry]:
  """Table 3: NF-RegNet B0 to B5 (each variant's resolutions and dropout from its table)."""
  return [
    SweepEntry(
      f"nf_regnet_{variant}_seed{seed}", f"model=nf_regnet,variant={variant}", {"train.seed": seed}
    )
    for variant in variants
    for seed in range(seeds)
  ]


def accumulation_steps(batch: int, max_micro_batch: int) -> int:
  """Micro-batches per step so that none exceeds ``max_micro_batch``: the fewest that divide.

  ``train.grad_accum_steps`` must divide the batch, so it is the smallest divisor ``k`` of
  ``batch`` with ``batch / k <= max_micro_batch`` (``batch // max_micro_batch`` for powers of 2).
  """
  if batch < 1 or max_micro_batch < 1:
    raise ConfigError(f"batch {batch} and micro-batch {max_micro_batch} must be positive")
  return next(k for k in range(-(-batch // max_micro_batch), batch + 1) if batch % k == 0)


def large_batch(
  depth: int,
  batch_sizes: Iterable[int],
  agc_clips: Sequence[float],
  max_micro_batch: int,
  models: Sequence[str] = ("nf", "bn"),
) -> list[SweepEntry]:
  """NF without and with AGC at each clipping threshold, and BN, at every batch size.

  The large-batch comparison of the NFNets paper (Brock, De, Smith & Simonyan 2021,
  arXiv 2102.06171, Section 4): the number of epochs stays the config's at every batch size,
  so larger batches take fewer steps. AGC (``optimizer.agc_clip``) is added to the first of
  ``models`` (the NF network). A batch larger than ``max_micro_batch`` is accumulated
  (``train.grad_accum_steps``, ``accumulation_steps``): exact for NF networks, while a BN
  network normalizes each micro-batch with its own statistics (docs/performance.md).
  Entries are named ``<model><depth>[_agc<clip>]_batch<batch>``, without a seed.
  """
  variants = [(models[0], None), *((models[0], clip) for clip in agc_clips)]
  variants += [(model, None) for model in models[1:]]
  entries = []
  for model, clip in variants:
    agc = {} if clip is None else {AGC_FIELD: clip}
    suffix = "" if clip is None else f"_agc{clip:g}"
    for batch in batch_sizes:
      overrides = {
        "train.batch_size": batch,
        "train.grad_accum_steps": accumulation_steps(batch, max_micro_batch),
        **agc,
      }
      name = f"{model}{depth}{suffix}_batch{batch}"
      entries.append(SweepEntry(name, f"model={model},depth={depth}", overrides))
  return entries


def powers_of_two(largest: int, smallest: int) -> list[int]:
  """``[largest, largest / 2, ..., smallest]``, e.g. 1024 down to 4."""
  sizes = []
  size = largest
  while size >= smallest:
    sizes.append(size)
    size //= 2
  return sizes


def select(
  name: str | None, builders: Mapping[str, Callable[[], list[SweepEntry]]], what: str
) -> list[SweepEntry]:
  """Calls the builder of sweep ``name``; one-line ConfigError for an unknown name.

  Args:
    name: sweep name from ``--config=FILE:NAME``.
    builders: the sweeps this config file offers.
    what: the config's name, used in error messages.

  Returns:
    The entries, after checking that their names are unique.
  """
  if name not in builders:
    raise ConfigError(f"unknown {what} sweep {name!r}; allowed: {', '.join(builders)}")
  entries = builders[name]()
  names = [entry.name for entry in entries]
  if len(set(names)) != len(names):
    raise ConfigError(f"{what} sweep {name!r} has duplicate entry names")
  return entries


LR_GRID_FACTORS = (0.5, 1.0, 2.0)
"""The reproduction protocol's learning-rate grid: factor 2 apart around a centre."""


def cells(entries: Sequence[SweepEntry]) -> list[SweepEntry]:
  """The distinct settings of one-seed entries: ``name_seed0`` -> ``name``, seed dropped."""
  out = []
  for entry in entries:
    overrides = {k: v for k, v in entry.overrides.items() if k != "train.seed"}
    out.append(SweepEntry(entry.name.removesuffix("_seed0"), entry.arg, overrides))
  return out


def lr_grid(
  grid_cells: Sequence[SweepEntry],
  centre: float,
  factors: Sequence[float] = LR_GRID_FACTORS,
  extra: Mapping[str, Sequence[float]] | None = None,
) -> list[SweepEntry]:
  """Tuning runs: every cell at ``optimizer.base_lr = centre * factor``, seed 0.

  Runs are named ``<cell>_lr<value>``, the form ``experiments.studies.tune`` reads.
  ``extra`` adds rates per cell beyond the grid: where the best rate so far is at an edge
  of the grid, ``experiments.studies.tune`` proposes the next one out (``next_lr``).
  """
  entries = []
  for cell in grid_cells:
    rates = [round(centre * factor, 10) for factor in factors]
    rates += [lr for lr in (extra or {}).get(cell.name, ()) if lr not in rates]
    for lr in rates:
      overrides = {**cell.overrides, "optimizer.base_lr": lr, "train.seed": 0}
      entries.append(SweepEntry(f"{cell.name}_lr{lr:g}", cell.arg, overrides))
  return entries


def tuned_seeds(
  grid_cells: Sequence[SweepEntry],
  rates: Mapping[str, float],
  seeds: int,
  reuse: Mapping[str, str] | None = None,
) -> list[SweepEntry]:
  """The final runs: every cell at its chosen ``optimizer.base_lr``, seeds 0 .. seeds - 1.

  Args:
    grid_cells: the study's cells (``cells``).
    rates: ``{cell: base_lr}`` (``experiments.configs.small_images.tuned_rates``).
    seeds: seeds per cell.
    reuse: ``{entry name: finished run}`` (``SweepEntry.reuse``), e.g. seed 0 from the
      tuning run at the chosen rate, which has the same config.

  Raises:
    ConfigError: a cell without a chosen learning rate (its tuning runs are missing).
  """
  missing = [cell.name for cell in grid_cells if cell.name not in rates]
  if missing:
    raise ConfigError(
      f"no tuned learning rate for {', '.join(missing)}: run the study's tuning sweep and "
      "python -m experiments.studies.tune first (docs/reproducing.md)"
    )
  return [
    SweepEntry(
      f"{cell.name}_seed{seed}",
      cell.arg,
      {**cell.overrides, "optimizer.base_lr": rates[cell.name], "train.seed": seed},
      (reuse or {}).get(f"{cell.name}_seed{seed}"),
    )
    for cell in grid_cells
    for seed in range(seeds)
  ]
