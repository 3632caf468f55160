"""The notebooks of ``notebooks/``: each ``.ipynb`` matches its jupytext source and runs.

Every notebook is committed twice: ``notebooks/NAME.py``, a jupytext percent-format
script (the reviewed, ruff-checked source), and ``notebooks/NAME.ipynb``, paired with
it and committed with outputs cleared. ``jupytext --sync notebooks/*.py`` resyncs them.

The execution tests run each ``.ipynb`` top to bottom in a fresh kernel. The kernel
is this interpreter (a kernel spec written to a temporary ``JUPYTER_PATH``), so a
fresh ``pip install -e ".[test]"`` environment runs the notebooks with the code under
test. The kernel starts without the 8 fake devices of ``conftest.py``, as on a
laptop. Cells assert their own numbers; any error fails the test.
"""

import difflib
import json
import pathlib
import sys

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"
NAMES = ("01_tour", "02_signal_propagation", "03_extend")
PAIRING = "ipynb,py:percent"
SYNC = "jupytext --sync notebooks/*.py"
KERNEL = "nfresnet-tests"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("jupyter")
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  kernel = {"argv": argv, "display_name": "nfresnet tests", "language": "python"}
  (spec / "kernel.json").write_text(json.dumps(kernel))
  return root


def cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
  return [(cell.cell_type, cell.source) for cell in notebook.cells]


def first_difference(source: list[tuple[str, str]], committed: list[tuple[str, str]]) -> str:
  """Where the committed .ipynb departs from the .py: cell index and a short diff."""
  for i, (want, got) in enumerate(zip(source, committed, strict=False)):
    if want != got:
      diff = difflib.unified_diff(
        f"[{got[0]}]\n{got[1]}".splitlines(),
        f"[{want[0]}]\n{want[1]}".splitlines(),
        ".ipynb",
        ".py",
        lineterm="",
        n=1,
      )
      return f"cell {i} differs:\n" + "\n".join(list(diff)[:20])
  return f"the .py has {len(source)} cells, the .ipynb {len(committed)}"


def test_every_notebook_is_a_pair():
  sources = sorted(path.stem for path in NOTEBOOKS.glob("*.py"))
  notebooks = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
  assert sources == notebooks == sorted(NAMES), (
    f"notebooks/ must hold one .py source and one .ipynb for each of {NAMES}; "
    f".py: {sources}, .ipynb: {notebooks}. Create a missing .ipynb with `{SYNC}`."
  )


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_in_sync_with_py_source(name):
  source = jupytext.read(NOTEBOOKS / f"{name}.py")
  formats = source.metadata.get("jupytext", {}).get("formats")
  assert formats == PAIRING, (
    f"notebooks/{name}.py: the jupytext header pairs it as {formats!r}, expected {PAIRING!r}"
  )
  committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  assert cells(committed) == cells(source), (
    f"notebooks/{name}.ipynb is out of sync with notebooks/{name}.py; "
    f"run `{SYNC}` (the newer file of each pair wins) and commit both. "
    + first_difference(cells(source), cells(committed))
  )
  stale = [i for i, cell in enumerate(committed.cells) if cell.get("outputs")]
  stale += [i for i, cell in enumerate(committed.cells) if cell.get("execution_count")]
  assert not stale, (
    f"notebooks/{name}.ipynb is committed with outputs (cells {sorted(set(stale))}); "
    f"clear them, e.g. `jupytext --to ipynb notebooks/{name}.py`"
  )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fresh_kernel(name, jupyter_path, monkeypatch):
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = NotebookClient(
    notebook,
    kernel_name=KERNEL,
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(NOTEBOOKS)}},
  )
  client.execute()  # Raises CellExecutionError on the first failing cell.
  outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == "error"]
  images = [out for out in outputs if "image/png" in out.get("data", {})]
  assert images, f"{name} drew no inline figure"
