"""Executes every notebook of ``notebooks/`` top to bottom in a fresh kernel (GitHub issue 8).

The kernel is this interpreter (a kernel spec written to a temporary
``JUPYTER_PATH``), so a fresh ``pip install -e ".[test]"`` environment runs the
notebooks with the code under test. The kernel starts without the 8 fake
devices of ``conftest.py``, as on a laptop. Cells assert their own numbers; any
error fails the test.
"""

import importlib.util
import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"
NAMES = ("01_tour.ipynb", "02_signal_propagation.ipynb", "03_extend.ipynb")
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


def load_builder():
  spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_notebooks_match_builder_and_have_no_outputs():
  builder = load_builder()
  assert tuple(builder.NOTEBOOKS) == NAMES
  for name, cells in builder.NOTEBOOKS.items():
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert [cell.source for cell in notebook.cells] == [source for _, source in cells], name
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fresh_kernel(name, jupyter_path, monkeypatch):
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
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
