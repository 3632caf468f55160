"""Signal Propagation Plot figures and their JSON/CSV records (paper Section 3).

``plot_spp`` draws the paper's three panels (average channel squared mean,
average channel variance, residual average channel variance) against the block
index, marks the stage ends and draws the analytic NF variance ``1 + k * alpha^2``
as a dashed line for models that have one, and the mean-field prediction
(``nfresnet.mean_field_signal_variance``) as a dotted line where it differs.
matplotlib is imported inside ``plot_spp`` only, which builds a
``matplotlib.figure.Figure`` without pyplot: it never changes the backend, so it
works the same in scripts and notebooks.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PANELS = (
  ("avg_sq_mean", "Average channel squared mean", "log"),
  ("avg_var", "Average channel variance", "log"),
  ("residual_var", "Residual average channel variance", "linear"),
)
ARRAY_KEYS = (
  "avg_sq_mean",
  "avg_var",
  "residual_var",
  "block_index",
  "stage",
  "stage_ends",
  "expected_var",
)
SCALAR_KEYS = (
  "stem_avg_sq_mean",
  "stem_avg_var",
  "init_seconds",
  "compile_seconds",
  "run_seconds",
)
# Log-scale floor of the squared-mean panel: ReLU-BN-Conv means are exact zeros
# up to float32 round-off (1e-14), which would squash every other curve.
SQ_MEAN_FLOOR = 1e-6
CSV_COLUMNS = (
  "model",
  "block",
  "block_name",
  "stage",
  "avg_sq_mean",
  "avg_var",
  "residual_var",
  "analytic_var",
  "mean_field_var",
  "mean_field_residual_var",
)


@dataclasses.dataclass(frozen=True)
class SPPRun:
  """One measured model.

  Attributes:
    label: legend entry.
    spec: the ``name:key=value,...`` string that built it.
    kwargs: constructor keyword arguments.
    result: ``nfresnet.signal_propagation`` output.
    analytic: the NF variance curve, or None for models without one.
    mean_field: ``avg_var`` and ``residual_var`` predicted by the mean-field
      recursion, or None where it equals the analytic curve or does not apply.
  """

  label: str
  spec: str
  kwargs: Mapping[str, Any]
  result: Mapping[str, np.ndarray]
  analytic: np.ndarray | None = None
  mean_field: Mapping[str, np.ndarray] | None = None


def plot_spp(
  runs: Sequence[SPPRun], path: str | pathlib.Path | None = None, title: str = ""
) -> Any:
  """The three-panel Signal Propagation Plot of ``runs``.

  Args:
    runs: the measured models, drawn in order.
    path: where to write the figure (PNG); None writes nothing.
    title: figure title.

  Returns:
    The ``matplotlib.figure.Figure`` (after ``%matplotlib inline``, ``display(fig)`` shows it).
  """
  import matplotlib
  from matplotlib.figure import Figure

  fig = Figure(figsize=(16, 4.6))
  axes = fig.subplots(1, 3)
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  for number, run in enumerate(runs):
    color = colors[number % len(colors)]
    blocks = np.arange(1, len(run.result["avg_var"]) + 1)
    for ax, (key, _, _) in zip(axes, PANELS, strict=True):
      ax.plot(blocks, run.result[key], color=color, linewidth=1.4, label=run.label)
    if run.analytic is not None:
      axes[1].plot(
        blocks, run.analytic, "--", color="black", linewidth=1.0, label="NF analytic 1 + k alpha^2"
      )
    if run.mean_field is not None:
      for ax, key in ((axes[1], "avg_var"), (axes[2], "residual_var")):
        label = f"{run.label}: mean field"
        ax.plot(blocks, run.mean_field[key], ":", color=color, linewidth=1.6, label=label)
  if runs:
    for end in runs[0].result["stage_ends"][:-1]:
      for ax in axes:
        ax.axvline(end + 1.5, color="grey", linewidth=0.6, linestyle=":")
  for ax, (_, name, scale) in zip(axes, PANELS, strict=True):
    ax.set_yscale(scale)
    ax.set_title(name)
    ax.set_xlabel("Residual block")
    ax.grid(True, which="major", alpha=0.3)
  low = min((float(np.min(run.result["avg_sq_mean"])) for run in runs), default=1.0)
  if low < SQ_MEAN_FLOOR:
    axes[0].set_ylim(bottom=SQ_MEAN_FLOOR)
    axes[0].set_title(f"{PANELS[0][1]} (floor {SQ_MEAN_FLOOR:g})")
  handles, labels = axes[1].get_legend_handles_labels()
  unique = dict(zip(labels, handles, strict=True))
  fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.08, 1, 0.97 if title else 1))
  if path is not None:
    fig.savefig(path, dpi=110)
  return fig


def _jsonable(value: Any) -> Any:
  """Lists and Python scalars; float32 statistics keep 8 significant digits."""
  if isinstance(value, np.ndarray | np.generic) and value.dtype == np.float32:
    rounded = [float(f"{v:.8g}") for v in np.ravel(value).tolist()]
    return rounded if np.ndim(value) else rounded[0]
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def run_record(run: SPPRun) -> dict[str, Any]:
  """JSON-ready description and statistics of one run."""
  record = {"label": run.label, "spec": run.spec, "kwargs": dict(run.kwargs)}
  record["block_names"] = [str(name) for name in run.result["block_names"]]
  for key in ARRAY_KEYS + SCALAR_KEYS:
    record[key] = _jsonable(run.result[key])
  record["analytic_var"] = None if run.analytic is None else run.analytic.tolist()
  mean_field = run.mean_field or {}
  record["mean_field"] = {k: np.asarray(v).tolist() for k, v in mean_field.items()} or None
  return record


def write_json(runs: Sequence[SPPRun], settings: Mapping[str, Any], path: str | pathlib.Path):
  """Writes ``{"settings": ..., "models": [...]}`` to ``path``."""
  payload = {"settings": dict(settings), "models": [run_record(run) for run in runs]}
  pathlib.Path(path).write_text(json.dumps(payload) + "\n")


def write_csv(runs: Sequence[SPPRun], path: str | pathlib.Path) -> None:
  """Writes one row per (model, block) with the three statistics and the NF curve."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for run in runs:
      r = run.result
      curves = [run.analytic] + [(run.mean_field or {}).get(k) for k in ("avg_var", "residual_var")]
      for i, name in enumerate(r["block_names"]):
        row = [run.label, i, str(name), int(r["stage"][i])]
        row += [f"{float(r[key][i]):.6g}" for key in ("avg_sq_mean", "avg_var", "residual_var")]
        writer.writerow(row + ["" if c is None else f"{c[i]:.6g}" for c in curves])
