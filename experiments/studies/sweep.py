r"""Runs every entry of a sweep, one after another: ``ROOT/<entry-name>`` per run.

Usage::

  python -m experiments.studies.sweep --config=experiments/configs/fashion_mnist.py:table1 \
    --workdir=results/table1/runs [--dry_run] [--only=nf18_*,bn18_*] [--set=train.num_epochs=1] \
    [--shard=0/2]

Each entry runs as its own ``python -m experiments.main`` process: a crash, an
out-of-memory kill or a diverged run ends only that entry, every run starts
with a fresh JAX (no compiled code piling up across runs), and the command
that runs is exactly the one ``--dry_run`` prints for a cluster scheduler.

An entry is finished when its ``sweep_status.json`` says ``done`` (written
here after the run exits with status 0) and is then skipped; an entry with
checkpoints but no ``done`` status was interrupted, and rerunning it resumes
from its latest checkpoint (``experiments.train`` does that by itself). A
failing entry is recorded as ``failed`` with its error line, the remaining
entries still run, the summary lists the failures and the exit status is 1.
``--shard=K/N`` keeps every N-th entry from position K: N sweeps with the same flags and
shards 0/N .. N-1/N (``results/run_protocol.sh`` with ``SWEEP_SHARDS=N``, one per core)
share a study without running one entry twice.
Usage errors (unknown sweep, bad --only pattern or --shard, a bad ``--set`` for any entry) exit
with status 2 before anything runs. SIGTERM and SIGINT are forwarded to the running
entry, which is waited for; the sweep then exits with status 5 and a rerun resumes.

An entry with ``reuse`` (``SweepEntry.reuse``: seed 0 of a tuned study is the tuning run
at the chosen rate) is not trained when that run is finished and its ``config.json``
equals the entry's config: its ``config.json`` and ``metrics.jsonl`` are copied and the
status records where from (``reused``). Otherwise the entry trains as usual.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import ml_collections
from absl import flags

from experiments import cli, paths
from experiments.cli import fail
from experiments.configs import ConfigError
from experiments.configs.sweeps import SweepEntry

USAGE_ERROR = cli.USAGE_ERROR
FAILED = 1
STATUS_FILE = "sweep_status.json"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

CONFIG = flags.DEFINE_string("config", None, "Config file and sweep name: FILE.py:SWEEP.")
WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root; entry NAME runs in ROOT/NAME.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one launch command per entry, run nothing.")
ONLY = flags.DEFINE_list("only", [], "Entry names or shell patterns to run (default: all).")
SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to every entry.")
SHARD = flags.DEFINE_string(
  "shard",
  None,
  "K/N: only the entries at positions K, K+N, K+2N, ... (0-based, after --only), so that N "
  "sweeps (one per core) share a study and never run one entry twice.",
)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A loaded sweep: the config file (as given) and its module, the sweep name, its entries."""

  config_file: str
  module: ModuleType
  name: str
  entries: list[SweepEntry]


def load_module(config_file: str) -> ModuleType:
  """Imports a config file by path; ConfigError if missing or without ``get_sweep``."""
  path = pathlib.Path(config_file)
  if not path.is_file():
    raise ConfigError(f"config file {config_file!r} not found")
  spec = importlib.util.spec_from_file_location(f"sweep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as error:  # noqa: BLE001 - any error in a config file is a usage error.
    raise ConfigError(f"cannot load {config_file}: {type(error).__name__}: {error}") from None
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{config_file} defines no get_sweep(name); it has no sweeps")
  return module


def load_sweep(config: str, only: Sequence[str] = ()) -> Sweep:
  """Loads ``FILE:SWEEP`` and keeps the entries matching ``only`` (all when empty).

  Raises:
    ConfigError: no sweep name, unknown sweep, or ``only`` matching nothing.
  """
  config_file, _, name = config.partition(":")
  if not name:
    raise ConfigError(f"--config={config!r} names no sweep; write FILE.py:SWEEP, e.g. :table1")
  module = load_module(config_file)
  entries = module.get_sweep(name)
  if only:
    entries = [e for e in entries if any(fnmatch.fnmatchcase(e.name, p) for p in only)]
    if not entries:
      raise ConfigError(f"--only={','.join(only)} matches no entry of sweep {name!r}")
  return Sweep(config_file, module, name, entries)


def shard_of(sweep: Sweep, shard: str | None) -> Sweep:
  """The entries of shard ``"K/N"`` (positions K, K+N, ...); every entry for None.

  Raises:
    ConfigError: not two integers K/N with 0 <= K < N.
  """
  if shard is None:
    return sweep
  index, _, count = shard.partition("/")
  if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
    raise ConfigError(
      f"--shard={shard!r} must be K/N with 0 <= K < N, e.g. --shard=0/2 and --shard=1/2 for "
      "two sweeps sharing one study"
    )
  return dataclasses.replace(sweep, entries=sweep.entries[int(index) :: int(count)])


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config.<key> = value`` for a dotted key; ConfigError if the field does not exist."""
  *parents, leaf = key.split(".")
  node = config
  try:
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(leaf)
    node[leaf] = value
  except (KeyError, AttributeError) as error:
    raise ConfigError(f"override {key}={value!r}: no such config field ({error})") from None
  except TypeError as error:
    raise ConfigError(f"override {key}={value!r}: wrong type ({error})") from None


def entry_config(sweep: Sweep, entry: SweepEntry) -> ml_collections.ConfigDict:
  """The locked config one entry runs with: ``get_config(entry.arg)`` plus its overrides.

  Raises:
    ConfigError: a bad argument or an override of a field that does not exist.
  """
  config = sweep.module.get_config(entry.arg)
  config.lock()
  for key, value in entry.overrides.items():
    set_dotted(config, key, value)
  return config


def typed_value(current: Any, text: str) -> Any:
  """``--set`` text as the type of the field's current value (as the config flags parse it)."""
  try:
    if isinstance(current, bool):
      return cli.parse_bool(text)
    if isinstance(current, (int, float, str)):
      return type(current)(text)
  except (ValueError, argparse.ArgumentTypeError):
    raise ConfigError(
      f"value {text!r} is not of type {type(current).__name__} (the field holds {current!r})"
    ) from None
  return cli.parse_scalar(text)


def sweep_config(
  sweep: Sweep, entry: SweepEntry, extra: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """The config one entry runs with: ``entry_config`` plus the sweep's ``--set`` overrides.

  Raises:
    ConfigError: a bad entry, or an override of a missing field or of the wrong type.
  """
  return apply_set(entry_config(sweep, entry), extra)


def apply_set(config: ml_collections.ConfigDict, extra: Sequence[str]) -> ml_collections.ConfigDict:
  """``config`` with the ``--set KEY=VALUE`` overrides, each typed as the field it replaces.

  Raises:
    ConfigError: an override of a missing field or of the wrong type.
  """
  for item in extra:
    key, _, text = item.partition("=")
    node = config
    try:
      for part in key.split("."):
        node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f"--set {item!r}: no such config field {key!r}") from None
    try:
      set_dotted(config, key, typed_value(node, text))
    except ConfigError as error:
      raise ConfigError(f"--set {item!r}: {error}") from None
  return config


def check_overrides(sweep: Sweep, extra: Sequence[str]) -> None:
  """Applies ``--set`` to every entry before anything runs (ConfigError on the first bad one).

  Entries whose own config is bad are left to fail on their own in ``run_sweep``.
  """
  for entry in sweep.entries:
    try:
      config = entry_config(sweep, entry)
    except ConfigError:
      continue
    apply_set(config, extra)


def format_value(value: object) -> str:
  """An override value as ``--config.KEY=VALUE`` text (booleans as true/false)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def entry_command(
  sweep: Sweep, entry: SweepEntry, root: str, extra: Sequence[str] = ()
) -> list[str]:
  """The ``python -m experiments.main`` command line of one entry.

  Args:
    sweep: the loaded sweep.
    entry: one of its entries.
    root: the sweep root (the run's workdir is ``root/entry.name``).
    extra: ``KEY=VALUE`` overrides for every entry, after the entry's own.
  """
  config = f"{sweep.config_file}:{entry.arg}" if entry.arg else sweep.config_file
  command = ["python", "-m", "experiments.main", f"--config={config}"]
  command.append(f"--workdir={os.path.join(root, entry.name)}")
  command += [f"--config.{k}={format_value(v)}" for k, v in entry.overrides.items()]
  command += [f"--config.{item}" for item in extra]
  return command


def read_status(run_dir: pathlib.Path) -> dict:
  """The entry's recorded status (``{}`` when it never ran here or the file is unreadable)."""
  try:
    return json.loads((run_dir / STATUS_FILE).read_text())
  except (OSError, ValueError):
    return {}


def entry_state(run_dir: pathlib.Path) -> str:
  """ "finished", "diverged", "interrupted" (checkpoints, not done) or "new".

  A diverged entry (exit status ``cli.DIVERGED``: a non-finite loss, gradient or parameter
  norm) is not rerun: resuming it from its last checkpoint would diverge again at the same
  step, since the data and the updates are a function of (seed, step). Delete its folder
  to run it again. Older sweeps recorded a divergence as ``failed`` with that exit status.
  """
  recorded = read_status(run_dir)
  status = recorded.get("status")
  if status == "done":
    return "finished"
  if status == "diverged" or (status == "failed" and recorded.get("returncode") == cli.DIVERGED):
    return "diverged"
  checkpoints = run_dir / CHECKPOINT_DIR
  if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return "interrupted"
  return "new"


def error_line(log: pathlib.Path) -> str:
  """The run's ``error: ...`` line from its log, else its last non-empty line."""
  try:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
  except OSError:
    return "no log"
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or ["no output"])[-1]


class SweepInterrupted(Exception):
  """SIGTERM or SIGINT reached the sweep; it was forwarded to the running entry."""


def run_child(argv: list[str], log: Any, env: Mapping[str, str]) -> tuple[int, str | None]:
  """Runs one entry's process; SIGTERM/SIGINT are forwarded to it and waited for.

  The child runs in its own session, so a terminal's Ctrl-C reaches it once, through
  here. Returns its exit status and the name of the signal received (or None).
  """
  child = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
  received: list[str] = []

  def forward(signum: int, frame: Any) -> None:
    del frame
    received.append(signal.Signals(signum).name)
    child.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    code = child.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return code, (received[0] if received else None)


def run_entry(command: list[str], run_dir: pathlib.Path) -> dict:
  """Runs one entry to completion, logging to ``run_dir/train.log``; returns its status.

  Raises:
    SweepInterrupted: a signal stopped the entry (status ``interrupted``; a rerun resumes).
  """
  run_dir.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  start = time.perf_counter()
  with (run_dir / LOG_FILE).open("a") as log:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    code, received = run_child([sys.executable, *command[1:]], log, env)
  done = code == 0 and received is None
  outcome = "diverged" if code == cli.DIVERGED else "failed"
  status = {"status": "done" if done else "interrupted" if received else outcome}
  status["returncode"] = code
  status["wall_s"] = round(time.perf_counter() - start, 1)
  status["command"] = shlex.join(command)
  if not done:
    status["error"] = error_line(run_dir / LOG_FILE)
  (run_dir / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
  if received:
    raise SweepInterrupted(f"{received}: {run_dir.name} stopped (exit {code}); rerun to resume")
  return status


@functools.cache
def field_defaults() -> dict[str, Any]:
  """``{"train.grad_accum_steps": 1, ...}``: every field of the base config with its default."""
  from experiments.configs import base_config

  flat: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(value, f"{prefix}{key}.")
      else:
        flat[f"{prefix}{key}"] = value

  walk(base_config().to_dict(), "")
  return flat


def same_config(
  ran: dict, wanted: dict, defaults: Mapping[str, Any] | None = None, prefix: str = ""
) -> bool:
  """Whether a finished run's config is ``wanted``.

  A field missing from ``ran`` counts as equal when ``wanted`` holds ``None`` or the field's
  default (``defaults``, dotted names; ``field_defaults()`` when not given): the run predates
  that field, and a new field's default keeps the old behaviour.
  """
  defaults = field_defaults() if defaults is None else defaults
  if ran.keys() - wanted.keys():
    return False
  for key, value in wanted.items():
    name = f"{prefix}{key}"
    if key not in ran:
      if value is not None and (name not in defaults or defaults[name] != value):
        return False
    elif isinstance(value, dict) and isinstance(ran[key], dict):
      if not same_config(ran[key], value, defaults, f"{name}."):
        return False
    elif ran[key] != value:
      return False
  return True


def reuse_run(sweep: Sweep, entry: SweepEntry, root: str, extra: Sequence[str]) -> dict | None:
  """Copies ``entry.reuse`` into the entry's directory when it is the same finished run.

  Returns the entry's new status, or ``None`` (train it) when there is nothing to reuse,
  the source is not finished or its config differs (``--set`` overrides included).
  """
  if not entry.reuse:
    return None
  source = paths.as_path(root) / entry.reuse
  if entry_state(source) != "finished":
    return None
  try:
    ran = json.loads((source / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None
  if not same_config(ran, json.loads(sweep_config(sweep, entry, extra).to_json_best_effort())):
    return None
  run_dir = paths.as_path(root) / entry.name
  run_dir.mkdir(parents=True, exist_ok=True)
  for name in (CONFIG_FILE, METRICS_FILE):
    shutil.copyfile(source / name, run_dir / name)
  status = {**read_status(source), "reused": entry.reuse}
  (run_dir / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
  return status


def other_run(run_dir: pathlib.Path, wanted: dict) -> str | None:
  """Why ``run_dir`` holds another run than ``wanted`` (its ``config.json`` differs), else None.

  A run folder left by another sweep (a shorter study, other overrides) is never counted as
  this entry's finished run nor resumed into; a folder without a readable config passes.
  """
  try:
    ran = json.loads((run_dir / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None
  if same_config(ran, wanted):
    return None
  return f"{run_dir} holds a run with another config; move it away or use another --workdir"


def run_sweep(sweep: Sweep, root: str, extra: Sequence[str] = ()) -> list[tuple[str, dict]]:
  """Runs the entries in order (skipping finished ones); returns ``(name, status)`` per entry."""
  results = []
  total = len(sweep.entries)
  for index, entry in enumerate(sweep.entries, 1):
    run_dir = paths.as_path(root) / entry.name
    try:
      wanted = json.loads(sweep_config(sweep, entry, extra).to_json_best_effort())
    except ConfigError as error:
      print(f"[{index}/{total}] {entry.name}: FAILED (bad entry): {error}", flush=True)
      results.append((entry.name, {"status": "failed", "error": f"error: {error}"}))
      continue
    state = entry_state(run_dir)
    other = other_run(run_dir, wanted) if state != "new" else None
    if other:
      print(f"[{index}/{total}] {entry.name}: FAILED: {other}", flush=True)
      results.append((entry.name, {"status": "failed", "error": f"error: {other}"}))
      continue
    if state in ("finished", "diverged"):
      print(f"[{index}/{total}] {entry.name}: {state}, skipped", flush=True)
      results.append((entry.name, read_status(run_dir)))
      continue
    reused = reuse_run(sweep, entry, root, extra) if state == "new" else None
    if reused is not None:
      print(f"[{index}/{total}] {entry.name}: reused {entry.reuse}", flush=True)
      results.append((entry.name, reused))
      continue
    action = "resuming" if state == "interrupted" else "starting"
    print(f"[{index}/{total}] {entry.name}: {action}", flush=True)
    status = run_entry(entry_command(sweep, entry, root, extra), run_dir)
    outcome = f"done in {status['wall_s']:.0f} s"
    if status["status"] != "done":
      outcome = f"FAILED (exit {status['returncode']}): {status['error']}"
    print(f"[{index}/{total}] {entry.name}: {outcome}", flush=True)
    results.append((entry.name, status))
  return results


def summarize(results: list[tuple[str, dict]]) -> tuple[str, bool]:
  """A summary text listing failed entries; and whether all entries are done."""
  failed = [(name, s) for name, s in results if s.get("status") != "done"]
  lines = [f"sweep: {len(results) - len(failed)} of {len(results)} entries done"]
  lines += [
    f"  {s.get('status', 'failed')}: {name}: {s.get('error', 'unknown error')}"
    for name, s in failed
  ]
  return "\n".join(lines), not failed


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    return fail(f"unexpected arguments {' '.join(argv[1:])}")
  if not CONFIG.value or not WORKDIR.value:
    return fail("--config=FILE.py:SWEEP and --workdir=ROOT are required")
  bad = [item for item in SET.value if "=" not in item]
  if bad:
    return fail(f"--set={bad[0]!r} must be KEY=VALUE, e.g. train.num_epochs=1")
  try:
    sweep = shard_of(load_sweep(CONFIG.value, ONLY.value), SHARD.value)
    check_overrides(sweep, SET.value)
    root = paths.as_path(WORKDIR.value, "--workdir")
  except ConfigError as error:
    return fail(str(error))
  if not DRY_RUN.value and not paths.is_local(root):
    return fail(
      f"--workdir={WORKDIR.value}: the sweep runs its entries here and keeps their logs "
      "locally, so it needs a local or shared directory; --dry_run prints the launch commands "
      "for this URL"
    )
  if DRY_RUN.value:
    for entry in sweep.entries:
      print(shlex.join(entry_command(sweep, entry, WORKDIR.value, SET.value)))
    return 0
  try:
    summary, ok = summarize(run_sweep(sweep, WORKDIR.value, SET.value))
  except SweepInterrupted as error:
    return fail(f"sweep interrupted by {error}", cli.INTERRUPTED)
  print(summary, flush=True)
  return 0 if ok else FAILED


def run() -> None:
  """Parses flags (one-line errors for bad ones) and runs ``main``."""
  cli.run(main)


if __name__ == "__main__":
  run()
