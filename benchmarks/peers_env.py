"""The timm side of ``benchmarks.peers``: its worker process and its virtual environment.

``Worker`` starts ``benchmarks.peers_torch`` in the side environment and exchanges one JSON
line per request with it (the protocol is in that module); ``worker_env`` gives it the
repository on ``PYTHONPATH``, its OpenMP thread count and wait policy. ``ensure_venv``
reuses the side environment (default ``.venv-peers`` at the repository root) when its python
imports torch and timm, else creates or repairs it with pip: torch and torchvision from the
CPU wheel index, then setup.py's ``PEERS`` requirements.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from experiments import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".venv-peers"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# The worker.


class WorkerError(RuntimeError):
  """The worker failed a request or stopped."""


class Worker:
  """The timm worker process: one JSON request, one JSON reply (``benchmarks.peers_torch``)."""

  def __init__(self, command: Sequence[str], env: dict[str, str] | None = None):
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
      list(command),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._stderr,
      text=True,
      cwd=REPO,
      env=env,
    )
    try:
      self.hello = self._reply()
    except WorkerError:
      self.close()
      raise

  def _reply(self) -> dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait(timeout=30)
      raise WorkerError(f"the worker stopped (exit {self.proc.returncode}): {self.stderr_tail()}")
    reply = json.loads(line)
    if not reply.get("ok"):
      raise WorkerError(reply.get("error", "no error message"))
    return reply

  def stderr_tail(self) -> str:
    self._stderr.seek(0)
    lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"

  def request(self, op: str, **fields: Any) -> dict[str, Any]:
    try:
      self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      self.proc.wait(timeout=30)
      raise WorkerError(f"the worker stopped: {self.stderr_tail()}") from None
    return self._reply()

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()
        self.proc.wait()
    self._stderr.close()

  def __enter__(self) -> Worker:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def worker_env(threads: int, wait_policy: str = "passive") -> dict[str, str]:
  """The worker's environment: the repository importable, ``threads`` OpenMP threads.

  ``wait_policy`` sets ``OMP_WAIT_POLICY`` ("unset": the environment's): OpenMP threads
  that spin at barriers ("active", and for a while libgomp's default) stall torch by
  10-100x on a shared machine, where a spinning thread holds a core another one needs.
  """
  path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
  if wait_policy != "unset":
    env["OMP_WAIT_POLICY"] = wait_policy.upper()
  return env


def worker_command(python: pathlib.Path, threads: int, *extra: str) -> list[str]:
  return [str(python), "-m", "benchmarks.peers_torch", f"--threads={threads}", *extra]


# The side environment.


def peers_requirements(setup_py: pathlib.Path = REPO / "setup.py") -> list[str]:
  """setup.py's ``PEERS`` list (read, not run)."""
  for node in ast.parse(setup_py.read_text()).body:
    if isinstance(node, ast.Assign) and any(
      isinstance(t, ast.Name) and t.id == "PEERS" for t in node.targets
    ):
      return list(ast.literal_eval(node.value))
  raise ValueError(f"{setup_py} has no PEERS list")


def install_commands(venv: pathlib.Path, requirements: Sequence[str]) -> list[list[str]]:
  """pip commands: torch (and torchvision) from the CPU index, then the rest from PyPI."""
  pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
  torch = [r for r in requirements if r.split(">")[0].split("=")[0].strip() == "torch"]
  rest = [r for r in requirements if r not in torch]
  return [[*pip, "--index-url", CPU_INDEX, *torch, "torchvision"], [*pip, *rest]]


def venv_python(venv: pathlib.Path) -> pathlib.Path:
  return venv / "bin" / "python"


def import_error(venv: pathlib.Path) -> str | None:
  """None when the venv's python imports torch and timm, else the reason."""
  python = venv_python(venv)
  if not python.exists():
    return f"{python} does not exist"
  proc = subprocess.run(
    worker_command(python, 1, "--check"),
    cwd=REPO,
    env=worker_env(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  if proc.returncode == 0:
    return None
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  return f"{python} cannot import torch and timm ({lines[-1] if lines else proc.returncode})"


def create_venv(venv: pathlib.Path) -> None:
  """Creates ``venv`` when missing and pip-installs the peers there (needs the network)."""
  if not venv_python(venv).exists():
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  for command in install_commands(venv, peers_requirements()):
    print(f"running {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def ensure_venv(venv: pathlib.Path, create: bool) -> tuple[str, int] | None:
  """Makes ``venv`` import torch and timm; None, or the error line and exit status.

  Without ``create``, a venv that cannot import them is bad input (exit 2); a failed
  installation is an I/O failure (exit 4).
  """
  why = import_error(venv)
  if why is None:
    return None
  if not create:
    message = f"--peers_venv={venv}: {why}; run without --no_create to install torch and timm"
    return message, cli.USAGE_ERROR
  try:
    create_venv(venv)
  except (OSError, subprocess.CalledProcessError) as error:
    return f"--peers_venv={venv}: installing torch and timm failed: {error}", cli.IO_ERROR
  why = import_error(venv)
  return (f"--peers_venv={venv}: {why} after installing", cli.IO_ERROR) if why else None
