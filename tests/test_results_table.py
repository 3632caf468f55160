"""The results tables of the docs are the ones the committed results give (no JAX).

``python -m experiments.studies.summary --check`` must pass on the committed README.md and
docs/training.md, and must fail (exit 1, one ``error:`` line) on a copy whose table differs.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

from experiments.studies import summary

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
DOCS_WITH_TABLES = ("README.md", "docs/training.md")


def check(*args: str) -> int:
  return summary.main(["--results", str(RESULTS), *args])


def test_imports_no_jax():
  """The summary reads CSV and JSON only: importing it must not import JAX."""
  code = "import sys, experiments.studies.summary; sys.exit('jax' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.parametrize("name", DOCS_WITH_TABLES)
def test_committed_block_matches_results(name, capsys):
  assert check("--check", str(REPO / name)) == 0, capsys.readouterr().err


def test_every_study_is_in_the_readme_table():
  text = (REPO / "README.md").read_text()
  for study in summary.find_studies(RESULTS):
    assert f"[{study.name}](results/{study.name}/report.md)" in text


def mirror(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
  """A copy of ``name`` whose links resolve as in the repository (results/ linked in)."""
  copy = tmp_path / name
  copy.parent.mkdir(parents=True, exist_ok=True)
  shutil.copy(REPO / name, copy)
  if not (tmp_path / "results").exists():
    (tmp_path / "results").symlink_to(RESULTS, target_is_directory=True)
  return copy


def test_check_fails_on_an_altered_copy(tmp_path, capsys):
  copy = mirror(tmp_path, "README.md")
  results = str(tmp_path / "results")
  assert summary.main(["--results", results, "--check", str(copy)]) == 0  # The copy as committed.
  begin = copy.read_text().index("<!-- results:begin -->")
  text = copy.read_text()
  row = text.index("| [short/table1]", begin)
  digit = next(i for i in range(text.index("NF ", row), len(text)) if text[i].isdigit())
  altered = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
  copy.write_text(altered)
  capsys.readouterr()
  assert summary.main(["--results", results, "--check", str(copy)]) == summary.CHECK_FAILED
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert copy.read_text() == altered  # --check changes nothing.
  assert summary.main(["--results", results, "--write", str(copy)]) == 0
  assert copy.read_text() == text


def test_stale_report_is_an_error(tmp_path, capsys):
  results = tmp_path / "results"
  shutil.copytree(RESULTS / "short" / "activation", results / "short" / "activation")
  report_csv = results / "short" / "activation" / "report.csv"
  lines = report_csv.read_text().splitlines()
  report_csv.write_text("\n".join(lines[:-1]) + "\n")  # One group fewer than the runs give.
  readme = tmp_path / "README.md"
  readme.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
  # The report names its runs relative to the repository root: results/short/activation/runs.
  assert summary.main(["--results", str(results), "--check", str(readme)]) == 2
  assert "does not match the runs" in capsys.readouterr().err


@pytest.mark.parametrize(
  ("text", "message"),
  [
    ("no markers here\n", "no <!-- results:begin -->"),
    ("<!-- results:begin -->\nnever closed\n", "without <!-- results:end -->"),
    ("<!-- results:begin nosuchstudy -->\n<!-- results:end -->\n", "unknown results block"),
  ],
)
def test_bad_files_are_one_line_errors(tmp_path, capsys, text, message):
  path = tmp_path / "doc.md"
  path.write_text(text)
  assert check("--check", str(path)) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_missing_file_and_bad_flags(tmp_path, capsys):
  assert check("--check", str(tmp_path / "absent.md")) == 2
  assert capsys.readouterr().err.startswith("error: ")
  with pytest.raises(SystemExit) as exit_info:
    check("--write", "README.md", "--check", "README.md")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("error: ")
