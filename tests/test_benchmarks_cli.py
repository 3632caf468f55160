"""Benchmark command lines: bad input is one ``error:`` line, exit 2, nothing written.

Also the suite's results guard: a partial run (``--only``) writes its own file and never the
full table, and a results file written for other cases is only overwritten with ``--force``.
Nothing here compiles a model: every measuring function is replaced by one that fails.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import cpu_ops, interleaved, peak, report, suite, throughput, xla_flags
from experiments import cli, multihost_check

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results" / "cpu-amd-epyc-2c"
CASE = "--case=model=nf,depth=18,resolution=16,batch_size=8,stem=cifar"
MH = ["--workdir={tmp}/work", "--out={tmp}/p0.json"]  # multihost_check's required flags.


def _must_not_run(*args, **kwargs):
  raise AssertionError("bad input reached the measurement")


@pytest.fixture(autouse=True)
def no_measuring(monkeypatch):
  """Anything past validation fails the test instead of compiling or training."""
  for module, name in [
    (throughput, "measure"),
    (interleaved, "interleave"),
    (peak, "matmul_peak"),
    (cpu_ops, "measure"),
    (suite, "measure_peak"),
    (suite, "run_case"),
    (xla_flags, "flag_accepted"),
    (xla_flags, "run_throughput"),
    (multihost_check, "tiny_config"),
  ]:
    monkeypatch.setattr(module, name, _must_not_run)
  for var in ("XLA_FLAGS", "JAX_PLATFORMS"):  # multihost_check sets them once it has parsed.
    monkeypatch.setenv(var, os.environ.get(var, ""))


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def out_tmp(tmp_path, monkeypatch):
  """A tmp folder with a results file in it, also the working directory."""
  (tmp_path / "results").mkdir()
  payload = {"command": "python -m benchmarks.suite --only=x", "only": "x", "results": {}}
  (tmp_path / "results" / "m.json").write_text(json.dumps(payload))
  (tmp_path / "a_file").write_text("not a folder\n")
  monkeypatch.chdir(tmp_path)
  return tmp_path


# (module, argv, what the error line must contain). ``{tmp}``: the tmp output folder.
BAD_INPUTS = [
  (throughput, ["--resolution=-1"], "argument --resolution: -1 is not a positive integer"),
  (throughput, ["--batch_size=0"], "argument --batch_size: 0 is not a positive integer"),
  (throughput, ["--steps=-3"], "argument --steps: -3 is not a non-negative integer"),
  (throughput, ["--warmup=abc"], "argument --warmup: 'abc' is not a non-negative integer"),
  (throughput, ["--num_classes=0"], "argument --num_classes: 0 is not a positive integer"),
  (throughput, ["--peak_flops=0"], "argument --peak_flops: 0 is not a positive finite number"),
  (throughput, ["--peak_flops=inf"], "argument --peak_flops: inf is not a positive finite"),
  (throughput, ["--depth=17"], "argument --depth: invalid choice: 17 (choose from 18, 26"),
  (throughput, ["--model=nfnet"], "argument --model: invalid choice: 'nfnet' (choose from"),
  (throughput, ["--compute_dtype=float16"], "invalid choice: 'float16' (choose from 'float32'"),
  (throughput, ["--conv_impl=cudnn"], "argument --conv_impl: invalid choice: 'cudnn'"),
  (throughput, ["--mode=predict"], "argument --mode: invalid choice: 'predict'"),
  (throughput, ["--batch_size=12"], "batch_size 12 must be a positive multiple of 8 devices"),
  (throughput, ["--frozen=true"], "frozen applies to --mode=eval only"),
  (throughput, ["--frozen=maybe"], "argument --frozen: 'maybe' is not a boolean"),
  (interleaved, [CASE, CASE, "--rounds=0"], "argument --rounds: 0 is not a positive integer"),
  (interleaved, [CASE, CASE, "--warmup=-1"], "argument --warmup: -1 is not a non-negative"),
  (interleaved, [CASE], "need two or more --case, got 1"),
  (interleaved, [CASE, f"{CASE},resolution=0"], "resolution 0 is not a positive integer"),
  (interleaved, [CASE, f"{CASE},depth=-1"], "unknown depth -1; allowed: 18, 26"),
  (peak, ["--size=0"], "argument --size: 0 is not a positive integer"),
  (peak, ["--dtype=int8"], "argument --dtype: invalid choice: 'int8'"),
  (peak, ["--repeats=-2"], "argument --repeats: -2 is not a positive integer"),
  (cpu_ops, ["--only=nope"], "argument --only: 'nope': expected a comma-separated list of"),
  (cpu_ops, ["--only=,"], "argument --only: ',': expected a comma-separated list of"),
  (cpu_ops, ["--rounds=0"], "argument --rounds: 0 is not a positive integer"),
  (suite, ["--out_dir={tmp}/results", "--only=("], "argument --only: '(' is not a regular"),
  (suite, ["--out_dir={tmp}/results", "--only=nomatch"], "--only='nomatch' matches no case"),
  (
    suite,
    ["--out_dir={tmp}/results", "--only=compile_nf600_unrolled"],
    "(compile_nf600_unrolled runs with --full only)",
  ),
  (suite, ["--out_dir={tmp}/results", "--machine=../x"], "--machine: '../x' is not a file-name"),
  (suite, ["--out_dir={tmp}/a_file", "--machine=m"], "a_file exists and is not a folder"),
  (suite, ["--out_dir={tmp}/results", "--machine=m"], "results/m.json holds the cases of"),
  (xla_flags, ["--only=fast_math,bogus"], "argument --only: unknown candidate 'bogus'; allowed"),
  (xla_flags, ["--only="], "argument --only: unknown candidate ''; allowed: baseline"),
  (xla_flags, ["--repeats=0"], "argument --repeats: 0 is not a positive integer"),
  (
    xla_flags,
    ["--", "--resolution=-1"],
    "throughput flags after --: argument --resolution: -1 is not a positive integer",
  ),
  (multihost_check, ["--num_processes=0", *MH], "argument --num_processes: 0 is not a positive"),
  (multihost_check, ["--process_id=-1", *MH], "argument --process_id: -1 is not a non-negative"),
  (
    multihost_check,
    ["--num_processes=2", "--process_id=2", "--port=1234", *MH],
    "--process_id=2 must be below --num_processes=2",
  ),
  (
    multihost_check,
    ["--port=70000", *MH],
    "argument --port: 70000 is not an integer in [0, 65535]",
  ),
  (multihost_check, ["--num_processes=2", *MH], "--num_processes=2 needs a coordinator --port"),
  (multihost_check, ["--local_devices=0", *MH], "argument --local_devices: 0 is not a positive"),
  (multihost_check, ["--num_steps=-1", *MH], "argument --num_steps: -1 is not a positive integer"),
  (
    multihost_check,
    ["--workdir={tmp}/work", "--out={tmp}/missing/p0.json"],
    "missing/p0.json: folder",
  ),
  (multihost_check, ["--workdir={tmp}/work"], "the following arguments are required: --out"),
]


def _id(case) -> str:
  module, argv, _ = case
  return f"{module.__name__.split('.')[-1]}:{' '.join(a for a in argv if a != CASE)}"


def check_one_error_line(err: str, expected: str) -> None:
  assert "Traceback" not in err
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("error: "), err
  assert expected in lines[0], err


@pytest.mark.parametrize("module, argv, expected", BAD_INPUTS, ids=map(_id, BAD_INPUTS))
def test_bad_input_is_one_error_line_and_exit_2(module, argv, expected, out_tmp, capsys):
  before = snapshot(out_tmp)
  argv = [a.format(tmp=out_tmp) for a in argv]
  try:
    code = module.main(argv)
  except SystemExit as exit_:
    code = exit_.code
  assert code == cli.USAGE_ERROR
  check_one_error_line(capsys.readouterr().err, expected.format(tmp=out_tmp))
  assert snapshot(out_tmp) == before


# The real command line, once per kind of failure: a type check in the parser, a check after
# parsing (before anything is written), and a script entry point.
SUBPROCESS_CASES = [
  ("benchmarks.throughput", ["--resolution=-1"], "argument --resolution: -1 is not a positive"),
  ("benchmarks.suite", ["--out_dir={tmp}/results", "--only=nomatch"], "matches no case"),
  ("experiments.multihost_check", ["--num_processes=0", *MH], "--num_processes: 0 is not"),
]


@pytest.mark.parametrize(
  "module, argv, expected", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES]
)
def test_bad_input_on_the_real_command_line(module, argv, expected, out_tmp):
  before = snapshot(out_tmp)
  cmd = [sys.executable, "-m", module, *(a.format(tmp=out_tmp) for a in argv)]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.run(cmd, cwd=out_tmp, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  check_one_error_line(proc.stderr, expected)
  assert proc.stdout == ""
  assert snapshot(out_tmp) == before


@pytest.mark.parametrize(
  "parse, good, bad, message",
  [
    (cli.positive_int, {"1": 1, "64": 64}, ["0", "-1", "1.5", "x", ""], "positive integer"),
    (cli.non_negative_int, {"0": 0, "3": 3}, ["-1", "2.0", "x"], "non-negative integer"),
    (
      cli.positive_float,
      {"0.5": 0.5, "2e9": 2e9},
      ["0", "-1", "inf", "nan", "x"],
      "positive finite",
    ),
    (
      cli.fraction,
      {"0": 0.0, "0.25": 0.25},
      ["1", "-0.1", "1.5", "nan", "x"],
      "fraction in [0, 1)",
    ),
    (cli.int_in_range(0, 9), {"0": 0, "9": 9}, ["-1", "10", "x"], "integer in [0, 9]"),
  ],
)
def test_argparse_types(parse, good, bad, message):
  for text, value in good.items():
    assert parse(text) == value
  for text in bad:
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not") as error:
      parse(text)
    assert text in str(error.value) and message in str(error.value)


# The suite's results files. ``run_case`` and ``measure_peak`` are fakes: no model compiles.


def fake_result(case, timing, peak_flops):
  machine = {"load_average": 0.5, "device_count": 1, "device_kind": "cpu", "cpu": "fake"}
  return {
    "label": case.label(),
    "lower_s": 0.25,
    "xla_compile_s": 0.75,
    "compile_s": 1.0,
    "machine": machine,
  }


@pytest.fixture
def fake_suite(monkeypatch, tmp_path):
  """An out_dir holding a copy of the committed full table as ``cpu-amd-epyc-2c``."""
  monkeypatch.setattr(suite, "measure_peak", lambda: 1e11)
  monkeypatch.setattr(suite, "run_case", fake_result)
  out = tmp_path / "results"
  out.mkdir()
  for suffix in (".json", ".md"):
    (out / f"cpu-amd-epyc-2c{suffix}").write_bytes(COMMITTED.with_suffix(suffix).read_bytes())
  return out


def run_suite(out: pathlib.Path, *args: str) -> int:
  return suite.main([f"--out_dir={out}", "--machine=cpu-amd-epyc-2c", *args])


def test_partial_run_writes_its_own_file_and_records_the_command(fake_suite, capsys):
  full = snapshot(fake_suite)
  assert run_suite(fake_suite, "--only=nf18_train") == 0
  after = snapshot(fake_suite)
  assert {k: after[k] for k in full} == full  # The full table is untouched.
  assert sorted(set(after) - set(full)) == [
    "cpu-amd-epyc-2c-only-nf18-train.json",
    "cpu-amd-epyc-2c-only-nf18-train.md",
  ]
  payload = json.loads(after["cpu-amd-epyc-2c-only-nf18-train.json"])
  command = f"python -m benchmarks.suite --out_dir={fake_suite} --machine=cpu-amd-epyc-2c"
  assert payload["command"] == f"{command} --only=nf18_train"
  assert (payload["only"], payload["full"]) == ("nf18_train", False)
  assert list(payload["results"]) == ["nf18_train", "nf18_train_bf16"]
  md = after["cpu-amd-epyc-2c-only-nf18-train.md"].decode()
  assert md.startswith("# Benchmarks on `cpu-amd-epyc-2c` (partial run)")
  assert f"Command: `{command} --only=nf18_train`." in md
  assert "Partial run: only the 2 cases matching `--only`" in md
  # The same partial command again overwrites its own file without --force.
  assert run_suite(fake_suite, "--only=nf18_train") == 0
  assert "wrote" in capsys.readouterr().out


def test_full_run_replaces_a_full_table_as_before(fake_suite):
  assert run_suite(fake_suite) == 0
  assert sorted(snapshot(fake_suite)) == ["cpu-amd-epyc-2c.json", "cpu-amd-epyc-2c.md"]
  payload = json.loads((fake_suite / "cpu-amd-epyc-2c.json").read_text())
  assert list(payload["results"]) == [name for name, _, _ in suite.select(None, False)]
  assert (payload["only"], payload["full"]) == (None, False)
  md = (fake_suite / "cpu-amd-epyc-2c.md").read_text()
  assert "(partial run)" not in md and "Command: `python -m benchmarks.suite --out_dir=" in md


def test_an_interrupted_run_leaves_the_table_as_it_was(fake_suite, monkeypatch):
  full = snapshot(fake_suite)
  calls = []

  def interrupted(case, timing, peak_flops):
    calls.append(case)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return fake_result(case, timing, peak_flops)

  monkeypatch.setattr(suite, "run_case", interrupted)
  with pytest.raises(KeyboardInterrupt):
    run_suite(fake_suite)
  after = snapshot(fake_suite)
  assert {k: after[k] for k in full} == full
  progress = json.loads(after["cpu-amd-epyc-2c.incomplete.json"])
  assert list(progress["results"]) == ["nf18_train"]


@pytest.mark.parametrize(
  "first, second, stem",
  [
    (["--only=nf18_train"], ["--only=nf18.train"], "cpu-amd-epyc-2c-only-nf18-train"),
    ([], ["--full"], "cpu-amd-epyc-2c"),
  ],
  ids=["same-slug-other-only", "full-over-default"],
)
def test_results_of_another_command_need_force(fake_suite, capsys, first, second, stem):
  assert run_suite(fake_suite, *first) == 0
  capsys.readouterr()
  before = snapshot(fake_suite)
  assert run_suite(fake_suite, *second) == 2
  err = capsys.readouterr().err
  check_one_error_line(err, f"{fake_suite / stem}.json holds the cases of `python -m")
  assert err.rstrip().endswith("; pass --force to overwrite it")
  assert snapshot(fake_suite) == before
  assert run_suite(fake_suite, *second, "--force") == 0
  assert "--force" in json.loads((fake_suite / f"{stem}.json").read_text())["command"]


def test_a_file_not_written_by_the_suite_needs_force(fake_suite, capsys):
  (fake_suite / "other.md").write_text("# hand-written\n")
  before = snapshot(fake_suite)
  assert suite.main([f"--out_dir={fake_suite}", "--machine=other"]) == 2
  check_one_error_line(capsys.readouterr().err, "other.md exists without other.json")
  assert snapshot(fake_suite) == before


def test_committed_table_is_the_report_of_its_json():
  """Files from before the command was recorded keep their header (``full`` gives the command)."""
  payload = json.loads(COMMITTED.with_suffix(".json").read_text())
  assert "command" not in payload
  assert report.markdown(payload) == COMMITTED.with_suffix(".md").read_text()
  assert suite.recorded_command(payload) == "python -m benchmarks.suite"


@pytest.mark.parametrize(
  "only, stem",
  [
    (None, "m"),
    ("nf18_train", "m-only-nf18-train"),
    ("^(nf|bn)50_eval$", "m-only-nf-bn-50-eval"),
    (".*", "m-partial"),
  ],
)
def test_results_stem(only, stem):
  assert suite.results_stem("m", only) == stem


def test_cpu_ops_forms_agree_on_every_case():
  """Each timed pair computes the same values and gradients (what the ratios compare)."""
  for case in cpu_ops.cases():
    small = cpu_ops.OpCase(
      case.kind, case.label, case.ours, case.textbook, tuple(shrink(s) for s in case.shapes)
    )
    args = cpu_ops.inputs(small)
    n = len(small.shapes)
    ours = cpu_ops.forward_and_gradient(small.ours, n)(*args)
    textbook = cpu_ops.forward_and_gradient(small.textbook, n)(*args)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(textbook), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=case.label)


def shrink(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The case's shape cut to at most 8 per axis (the same kinds of operation, cheap)."""
  return tuple(min(d, 8) for d in shape)
