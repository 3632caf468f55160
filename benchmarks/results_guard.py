"""The committed results file a benchmark run is about to replace (no JAX: workers import it).

Each benchmark writes ``<stem>.json`` and ``<stem>.md``; a run may replace them only when they
were written by the same tool with the same arguments (else ``--force``). ``previous`` reads
the old file and says why it cannot be replaced when it is not one of the tool's.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any


def previous(stem: pathlib.Path, tool: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
  """``(payload, None)`` of ``<stem>.json``, ``(None, None)`` when there is none, or
  ``(None, why)`` when the files there are not ``tool``'s (``key``: a dict its payloads hold).
  """
  json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
  if not json_path.exists():
    why = f"{md_path} exists without {json_path.name} (not written by {tool})"
    return None, why if md_path.exists() else None
  try:
    payload = json.loads(json_path.read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get(key), dict):
      raise ValueError(f"no {key}")
  except (OSError, ValueError):
    return None, f"{json_path} exists and is not a {tool} results file"
  return payload, None


def out_dir_problem(out_dir: str) -> str | None:
  """Why ``--out_dir`` cannot hold results (it is a file), or None."""
  path = pathlib.Path(out_dir)
  if path.exists() and not path.is_dir():
    return f"--out_dir={out_dir} exists and is not a folder"
  return None


def make_out_dir(out_dir: str) -> str | None:
  """Creates ``--out_dir``; why it could not be created, or None."""
  try:
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
  except OSError as error:
    return f"--out_dir={out_dir}: {error}"
  return None
