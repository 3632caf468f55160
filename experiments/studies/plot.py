"""report.png: one line per series against a numeric field, or one point per group.

Used by ``experiments.studies.report``; a group is anything with ``row`` and ``col``
(tuples of JSON-encoded field values), ``values``, ``median``, ``low`` and
``high`` (``experiments.studies.report.Group``).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any


def label(values: tuple, fields: Sequence[str]) -> str:
  """``nf_resnet, depth=18``: model names alone, other fields by their last name part.

  A field a run's config lacks (None) shows as ``default``.
  """
  parts = []
  for field, value in zip(fields, values, strict=True):
    value = json.loads(value)
    value = "default" if value is None else value
    parts.append(str(value) if field == "model_name" else f"{field.split('.')[-1]}={value}")
  return ", ".join(parts) or "all runs"


def numeric_axis(groups: Sequence[Any], fields: Sequence[str], attr: str) -> bool:
  """Whether ``fields`` is a single field with numeric values in every group."""
  values = [json.loads(getattr(g, attr)[0]) for g in groups] if len(fields) == 1 else []
  return bool(values) and all(isinstance(v, (int, float)) for v in values)


def plot_groups(
  path: pathlib.Path, groups: Sequence[Any], metric: str, rows: Sequence[str], cols: Sequence[str]
) -> None:
  """report.png: a line per series against a numeric field (log2 axis), else grouped points.

  A single numeric row field is the x axis with one line per column value
  (e.g. accuracy vs batch size, one line per model); a single numeric column
  field likewise; otherwise every group is one point with its min-max bar.
  """
  import matplotlib  # Deferred: only reports draw.

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  scale = 100.0 if "accuracy" in metric else 1.0
  fig, ax = plt.subplots(figsize=(7.0, 4.2))
  x_is_metric = not (numeric_axis(groups, rows, "row") or numeric_axis(groups, cols, "col"))
  if not x_is_metric:
    x_attr, series_attr = ("row", "col") if numeric_axis(groups, rows, "row") else ("col", "row")
    x_fields, series_fields = (rows, cols) if x_attr == "row" else (cols, rows)
    for series in dict.fromkeys(getattr(g, series_attr) for g in groups):
      members = [g for g in groups if getattr(g, series_attr) == series and g.values]
      xs = [json.loads(getattr(g, x_attr)[0]) for g in members]
      ys = [g.median * scale for g in members]
      err = [
        [(g.median - g.low) * scale for g in members],
        [(g.high - g.median) * scale for g in members],
      ]
      ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label(series, series_fields))
    xs_all = [json.loads(getattr(g, x_attr)[0]) for g in groups]
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:
      ax.set_xscale("log", base=2)
    ax.set_xlabel(x_fields[0])
    ax.legend(fontsize="small")
  else:
    names = [label(g.row, rows) + (" | " + label(g.col, cols) if cols else "") for g in groups]
    for i, g in enumerate(groups):
      if g.values:
        err = [[(g.median - g.low) * scale], [(g.high - g.median) * scale]]
        ax.errorbar([g.median * scale], [i], xerr=err, marker="o", capsize=3, color="C0")
    ax.set_yticks(range(len(groups)), names, fontsize="small")
    ax.set_ylim(len(groups) - 0.5, -0.5)
  axis = ax.set_xlabel if x_is_metric else ax.set_ylabel
  axis(metric + (" (%)" if scale != 1.0 else ""))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
