"""Our NF- and BN-ResNets against timm's on the same CPU threads, timed in alternating rounds.

Usage::

  python -m benchmarks.peers [--rounds=3] [--steps=N] [--warmup=1] [--threads=2] \\
    [--omp_wait_policy=passive] [--only=SUBSTRING[,SUBSTRING...]] [--list] \\
    [--peers_venv=.venv-peers] [--no_create] [--machine=NAME] [--out_dir=...] [--force]

Each case of ``CASES`` is one of our models (``benchmarks.workload``'s real train or eval
step, or the step of a reproduction-study config) and the timm model of the same shape.
The timm side runs in a long-lived worker process in a side virtual environment
(``benchmarks.peers_torch``, torch and timm, no JAX) that answers JSON-line requests; our
side runs here. Both sides are compiled or built and warmed up first, then the case runs
``--rounds`` rounds of ``--steps`` steps of ours, then of timm's, then ours again
(ABAB...), so a slow phase of the shared machine touches both and neither side's
start-up is timed. Same batch, same random-normal float32 images, same optimizer (SGD,
Nesterov momentum 0.9, weight decay 5e-5, label smoothing 0.1), same threads: this
process and the worker are pinned to the first ``--threads`` CPUs it may use and the
worker sets ``torch.set_num_threads``; XLA flags come from ``XLA_FLAGS``, as for every
benchmark. The worker's OpenMP threads wait passively (``--omp_wait_policy``,
``OMP_WAIT_POLICY``): on a shared machine spinning waits make torch many times slower.

A round's images/s is ``batch * steps / (sum of its step times)``. Each case prints
both sides' median over rounds with the min-max spread, the median and spread of the
per-round ratios ours / timm, and the 1-minute load average during the rounds.

The side environment (default ``.venv-peers`` at the repository root) is reused when its
python can import torch and timm, else created (or repaired) with pip: torch and
torchvision from the CPU wheel index, then setup.py's ``PEERS`` requirements;
``--no_create`` fails instead. Results: ``<out_dir>/peers-<machine>.json`` and ``.md``
(``-only-<slug>`` appended for ``--only``), written through an ``.incomplete`` pair
after each case; a file written for another selection (``--only``, ``--threads``,
``--omp_wait_policy``) is only replaced with ``--force``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import results_guard, suite, throughput, workload
from experiments import builder, cli, steps
from experiments.configs import fashion_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".venv-peers"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
OUT_DIR = suite.OUT_DIR
TOOL = "benchmarks.peers"
SELECTION = ("only", "threads", "omp_wait_policy")  # Their change: another results file.
WAIT_POLICIES = ("passive", "active", "unset")
TABLE1 = dict(
  study="table1",
  stem="cifar",
  width=0.25,
  channels=1,
  resolution=16,
  batch_size=128,
  num_classes=10,
)
"""The Table 1 study's networks (``experiments/configs/fashion_mnist.py``): Fashion-MNIST
(28x28x1) resized to 16 px, width 0.25, CIFAR stem, 10 classes, batch 128."""


@dataclasses.dataclass(frozen=True)
class PeerCase:
  """One of our models and the timm model of the same shape.

  Attributes:
    name: the case name (``--only`` matches substrings of it).
    model: our registry name, ``nf_resnet`` or ``resnet_v2``.
    depth: ResNet depth.
    mode: "train" or "eval".
    resolution: square input size.
    batch_size: images per step, both sides.
    steps: timed steps per round and side (``--steps`` replaces it).
    stem: "imagenet" or "cifar".
    width: channel multiplier.
    channels: input channels.
    num_classes: classifier outputs.
    study: "table1": our side is that study's config at this depth; None: ImageNet
      models through ``benchmarks.workload``.
    timm: ``timm.create_model`` name and keyword arguments (``name``, ``kwargs``,
      ``cifar_stem``; see ``benchmarks.peers_torch``), or None.
    no_timm: why timm cannot build this shape (``timm`` is None).
  """

  name: str
  model: str
  depth: int
  mode: str
  resolution: int = 224
  batch_size: int = 16
  steps: int = 2
  stem: str = "imagenet"
  width: float = 1.0
  channels: int = 3
  num_classes: int = 1000
  study: str | None = None
  timm: dict[str, Any] | None = None
  no_timm: str = ""

  def label(self) -> str:
    """Our side, e.g. ``nf_resnet-18 w0.25 16px 1ch b128 train``."""
    parts = [f"{self.model}-{self.depth}"]
    parts += [f"w{self.width:g}"] if self.width != 1.0 else []
    parts += [f"{self.resolution}px"]
    parts += [f"{self.channels}ch"] if self.channels != 3 else []
    return " ".join([*parts, f"b{self.batch_size}", self.mode])

  def timm_label(self) -> str:
    """The timm side: model name and the keyword arguments that reshape it."""
    if self.timm is None:
      return f"cannot build: {self.no_timm}"
    extra = [f"{k}={v}" for k, v in self.timm.get("kwargs", {}).items()]
    extra += ["CIFAR stem"] if self.timm.get("cifar_stem") else []
    return f"{self.timm['name']}({', '.join(extra)})" if extra else self.timm["name"]

  def timm_spec(self) -> dict[str, Any]:
    """The worker's ``prepare`` spec."""
    assert self.timm is not None, self.name
    shape = dict(in_chans=self.channels, num_classes=self.num_classes)
    shape.update(resolution=self.resolution, batch_size=self.batch_size, mode=self.mode)
    return {"kwargs": {}, "cifar_stem": False, **self.timm, **shape}


PAIRS_50 = (("nf_resnet", "nf_resnet50", "nf"), ("resnet_v2", "resnet50", "bn"))
"""(our model, timm model, name prefix) of the ImageNet-shaped cases."""


def imagenet_cases() -> list[PeerCase]:
  """NF-ResNet-50 vs timm ``nf_resnet50``, BN-ResNet-50 vs ``resnet50``; 224 px b16, 32 px b128."""
  cases = []
  for resolution, batch, train_steps, eval_steps in ((224, 16, 2, 3), (32, 128, 3, 5)):
    for ours, timm_name, short in PAIRS_50:
      for mode, count in (("train", train_steps), ("eval", eval_steps)):
        name = f"{short}50_{resolution}px_b{batch}_{mode}"
        timm = {"name": timm_name}
        cases.append(PeerCase(name, ours, 50, mode, resolution, batch, count, timm=timm))
  return cases


def table1_timm(model: str, depth: int) -> tuple[dict[str, Any] | None, str]:
  """The timm model of a Table 1 network, or why there is none."""
  if model == "resnet_v2":  # timm's ResNet (post-activation), widths scaled by 0.25.
    kwargs = {"channels": [16, 32, 64, 128], "stem_width": 16}
    return {"name": f"resnet{depth}", "kwargs": kwargs, "cifar_stem": True}, ""
  if depth == 26:  # Bottleneck blocks: timm's NormFreeNet, stage outputs 256..2048 x 0.25.
    kwargs = {"channels": [64, 128, 256, 512], "stem_chs": 16, "stem_type": "3x3_pool"}
    return {"name": "nf_resnet26", "kwargs": kwargs, "cifar_stem": True}, ""
  return None, "timm's NormFreeNet has bottleneck blocks only, no basic-block NF-ResNet-18"


def table1_cases() -> list[PeerCase]:
  """Table 1's NF- and BN-ResNet-18 and -26 (``TABLE1``), train and eval."""
  cases = []
  for ours, short in (("nf_resnet", "nf"), ("resnet_v2", "bn")):
    for depth in (18, 26):
      timm, why = table1_timm(ours, depth)
      for mode, count in (("train", 10), ("eval", 20)):
        name = f"table1_{short}{depth}_{mode}"
        case = PeerCase(name, ours, depth, mode, steps=count, timm=timm, no_timm=why, **TABLE1)
        cases.append(case)
  return cases


CASES: tuple[PeerCase, ...] = (*imagenet_cases(), *table1_cases())


def select(only: str | None) -> list[PeerCase]:
  """Cases whose name contains one of the comma-separated substrings of ``only``."""
  if only is None:
    return list(CASES)
  parts = [part for part in only.split(",") if part]
  return [case for case in CASES if any(part in case.name for part in parts)]


# Our side.


def study_config(case: PeerCase):
  """The study's experiment config at the case's depth, batch and step count."""
  short = "nf" if case.model == "nf_resnet" else "bn"
  config = fashion_mnist.get_config(f"model={short},depth={case.depth}")
  config.train.update(
    batch_size=case.batch_size,
    eval_batch_size=case.batch_size,
    num_steps=workload.STEPS_PER_RUN,
    compute_dtype="float32",
  )
  config.optimizer.warmup_steps = 0
  study = (config.model.width, config.model.stem, config.data.image_size)
  if study != (case.width, case.stem, case.resolution):
    raise ValueError(f"{case.name}: the study config has width, stem, size {study}")
  return config


def study_workload(case: PeerCase) -> workload.Workload:
  """The study config's real step (``experiments.builder``) on ``case``'s input shape."""
  experiment = builder.build(
    study_config(case), case.num_classes, workload.STEPS_PER_RUN * case.batch_size
  )
  shape = (case.resolution, case.resolution, case.channels)
  sharded = steps.batch_sharding(experiment.mesh)
  abstract = {
    "image": jax.ShapeDtypeStruct((case.batch_size, *shape), jnp.float32, sharding=sharded),
    "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32, sharding=sharded),
  }
  if case.mode == "eval":
    abstract["mask"] = jax.ShapeDtypeStruct((case.batch_size,), jnp.bool_, sharding=sharded)

  def make_args():
    key = jax.random.key(1)
    batch = {
      "image": jax.random.normal(key, abstract["image"].shape),
      "label": jax.random.randint(key, abstract["label"].shape, 0, case.num_classes),
    }
    if "mask" in abstract:
      batch["mask"] = jnp.ones(abstract["mask"].shape, jnp.bool_)
    return experiment.init_state(shape), jax.device_put(batch, sharded)

  step = experiment.train_step if case.mode == "train" else experiment.eval_step
  return workload.Workload(step, (experiment.abstract_state(shape), abstract), make_args)


def our_workload(case: PeerCase) -> workload.Workload:
  """The jitted step of our side of ``case``."""
  if case.study:
    return study_workload(case)
  fields = dict(stem=case.stem, num_classes=case.num_classes)
  return workload.build(
    workload.Case(case.model, case.depth, case.resolution, case.batch_size, case.mode, **fields)
  )


def prepare_ours(case: PeerCase, warmup: int) -> tuple[Callable[[], float], dict[str, Any]]:
  """Compiles and warms up our step; ``(timed step, {compile_s, params})``."""
  built = our_workload(case)
  start = time.perf_counter()
  compiled = built.step.lower(*built.abstract_args).compile()
  compile_s = time.perf_counter() - start
  params = sum(x.size for x in jax.tree.leaves(built.abstract_args[0].params))
  step = throughput.stepper(case, built, compiled)
  for _ in range(warmup):
    step()
  return step, {"compile_s": compile_s, "params": int(params)}


# The timm side.


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


# Timing and arithmetic.


def interleave(
  ours: Callable[[int], list[float]], timm: Callable[[int], list[float]], rounds: int, steps: int
) -> dict[str, list]:
  """``rounds`` rounds of ``steps`` steps of ours, then timm's; step times and load per round."""
  times: dict[str, list] = {"ours": [], "timm": [], "load": []}
  for _ in range(rounds):
    times["ours"].append(ours(steps))
    times["timm"].append(timm(steps))
    times["load"].append(os.getloadavg()[0])
  return times


def images_per_s(batch_size: int, step_times: Sequence[float]) -> float:
  """A round's throughput: ``batch * steps / total time``."""
  return batch_size * len(step_times) / sum(step_times)


def spread(values: Sequence[float]) -> dict[str, float]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(batch_size: int, times: dict[str, list]) -> dict[str, Any]:
  """Per-round images/s of both sides, their ratios, and median (min-max) of each."""
  ours = [images_per_s(batch_size, t) for t in times["ours"]]
  timm = [images_per_s(batch_size, t) for t in times["timm"]]
  ratio = [a / b for a, b in zip(ours, timm, strict=True)]
  return {
    "ours_images_per_s": spread(ours),
    "timm_images_per_s": spread(timm),
    "ratio": spread(ratio),
    "load": spread(times["load"]),
    "rounds": {"ours": ours, "timm": timm, "ratio": ratio, "load": times["load"]},
    "step_times_s": {"ours": times["ours"], "timm": times["timm"]},
  }


def measure(case: PeerCase, worker: Worker, rounds: int, steps: int, warmup: int) -> dict:
  """Prepares both sides of ``case`` and times them in alternating rounds."""
  step, ours_info = prepare_ours(case, warmup)
  timm_info = worker.request("prepare", case=case.name, spec=case.timm_spec(), warmup=warmup)
  try:
    times = interleave(
      lambda n: [step() for _ in range(n)],
      lambda n: worker.request("time", case=case.name, steps=n)["step_times_s"],
      rounds,
      steps,
    )
  finally:
    worker.request("release", case=case.name)
  result = summarize(case.batch_size, times)
  result.update(steps=steps, ours_compile_s=ours_info["compile_s"])
  result["params"] = {"ours": ours_info["params"], "timm": timm_info["params"]}
  return result


def summary_line(row: dict[str, Any]) -> str:
  """One printed line per case."""
  if "error" in row:
    return f"{row['name']}: error: {row['error']}"
  if "skipped" in row:
    return f"{row['name']}: not timed: timm {row['skipped']}"
  o, t, r, load = row["ours_images_per_s"], row["timm_images_per_s"], row["ratio"], row["load"]
  return (
    f"{row['name']}: ours {o['median']:.2f} img/s ({o['min']:.2f}-{o['max']:.2f}), timm"
    f" {t['median']:.2f} img/s ({t['min']:.2f}-{t['max']:.2f}), ours/timm {r['median']:.2f}"
    f" ({r['min']:.2f}-{r['max']:.2f}), load {load['min']:.1f}-{load['max']:.1f}"
  )


# Results files.


def markdown(payload: dict[str, Any]) -> str:
  """The results table."""
  lines = [
    f"# Ours vs timm: {payload['machine']}",
    "",
    f"Command: `{payload['command']}`. jax {payload['jax']}, torch {payload['torch']}, timm"
    f" {payload['timm']}; {payload['threads']} threads per side (timm's OpenMP wait policy:"
    f" {payload.get('omp_wait_policy', 'unset')}); {payload['rounds']} rounds of alternating"
    " timed steps (ours, timm, ours, ...).",
    "",
    "Images/s: median over rounds (min-max). Ours/timm: median (min-max) of the per-round ratios."
    " Load: 1-minute load average after each round (min-max); on 2 cores a load above 2 means"
    " the machine was shared.",
    "",
    "| case | ours | timm | steps/round | ours img/s | timm img/s | ours/timm | params ours / timm"
    " | load |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in payload["results"]:
    head = f"| {row['name']} | {row['label']} | {row['timm_label']} |"
    if "error" in row or "skipped" in row:
      what = f"error: {row['error']}" if "error" in row else "not timed"
      lines.append(f"{head} | {what} | | | | |")
      continue
    cells = [
      f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})"
      for k in ("ours_images_per_s", "timm_images_per_s", "ratio")
    ]
    params = f"{row['params']['ours'] / 1e6:.2f}M / {row['params']['timm'] / 1e6:.2f}M"
    load = f"{row['load']['min']:.1f}-{row['load']['max']:.1f}"
    lines.append(f"{head} {row['steps']} | {' | '.join(cells)} | {params} | {load} |")
  return "\n".join(lines) + "\n"


def write(stem: pathlib.Path, payload: dict[str, Any]) -> None:
  """Writes ``<stem>.json`` and ``<stem>.md``."""
  stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=1) + "\n")
  stem.with_name(stem.name + ".md").write_text(markdown(payload))


def overwrite_error(stem: pathlib.Path, arguments: dict[str, Any]) -> str | None:
  """Why ``<stem>.json``/``.md`` must not be replaced by this run without ``--force``."""
  payload, why = results_guard.previous(stem, TOOL, "arguments")
  if payload is not None and any(payload["arguments"].get(k) != arguments[k] for k in SELECTION):
    why = f"{stem}.json holds the cases of `{payload.get('command')}`, not of this run"
  return why


# The command line.


def parser() -> cli.UsageParser:
  p = cli.UsageParser(prog=f"python -m {TOOL}", description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=cli.positive_int, default=3)
  p.add_argument(
    "--steps", type=cli.positive_int, default=None, help="per round (default: per case)"
  )
  p.add_argument("--warmup", type=cli.non_negative_int, default=1, help="untimed steps per side")
  p.add_argument("--threads", type=cli.positive_int, default=2, help="CPU threads of each side")
  p.add_argument(
    "--omp_wait_policy", choices=WAIT_POLICIES, default="passive", help="OMP_WAIT_POLICY of timm"
  )
  p.add_argument("--only", default=None, help="comma-separated substrings of case names")
  p.add_argument("--list", action="store_true", help="print the cases and exit")
  p.add_argument("--peers_venv", type=pathlib.Path, default=DEFAULT_VENV)
  p.add_argument("--no_create", action="store_true", help="fail instead of installing the venv")
  p.add_argument("--machine", type=suite.file_label, default=None)
  p.add_argument("--out_dir", default=str(OUT_DIR))
  p.add_argument("--force", action="store_true", help="replace results of another selection")
  return p


def list_line(case: PeerCase) -> str:
  return f"{case.name}: ours {case.label()}; timm {case.timm_label()}; {case.steps} steps/round"


def check_threads(threads: int) -> str | None:
  allowed = len(os.sched_getaffinity(0))
  if threads > allowed:
    return f"--threads={threads} is more than the {allowed} CPUs this process may use"
  return None


def pin_threads(threads: int) -> None:
  """Pins this process (and the worker it starts) to its first ``threads`` allowed CPUs.

  Runs before JAX starts its CPU client, whose thread pool is sized by the CPUs allowed.
  """
  allowed = sorted(os.sched_getaffinity(0))
  if len(allowed) > threads:
    os.sched_setaffinity(0, allowed[:threads])


def run_cases(cases, worker: Worker, args, header: dict[str, Any], stem: pathlib.Path) -> None:
  """Times every case, printing a line and rewriting the ``.incomplete`` files after each."""
  payload = {**header, "results": []}
  progress = stem.with_name(stem.name + ".incomplete")
  for case in cases:
    row: dict[str, Any] = {"name": case.name, "label": case.label()}
    row.update(timm_label=case.timm_label(), case=dataclasses.asdict(case))
    if case.timm is None:
      row["skipped"] = case.timm_label()
    else:
      try:
        row.update(measure(case, worker, args.rounds, args.steps or case.steps, args.warmup))
      except (RuntimeError, ValueError) as error:  # WorkerError, XLA errors, ConfigError.
        row["error"] = str(error).splitlines()[0]
    payload["results"].append(row)
    print(summary_line(row), flush=True)
    write(progress, payload)
  suite.finish(progress, stem)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser().parse_args(argv)
  cases = select(args.only)
  if not cases:
    names = ", ".join(case.name for case in CASES)
    return cli.fail(f"--only={args.only!r} matches no case; cases: {names}")
  if args.list:
    print("\n".join(list_line(case) for case in cases))
    return 0
  why = check_threads(args.threads)
  out_dir = pathlib.Path(args.out_dir)
  why = why or results_guard.out_dir_problem(args.out_dir)
  machine = args.machine or suite.default_machine()
  stem = out_dir / suite.results_stem(f"peers-{machine}", args.only)
  arguments = {k: getattr(args, k) for k in (*SELECTION, "rounds", "steps", "warmup")}
  if not why and not args.force:
    why = overwrite_error(stem, arguments)
    why = why and f"{why}; pass --force to overwrite it"
  if why:
    return cli.fail(why)
  failed = ensure_venv(args.peers_venv, create=not args.no_create)
  if failed:
    return cli.fail(*failed)
  failed = results_guard.make_out_dir(args.out_dir)
  if failed:
    return cli.fail(failed)
  pin_threads(args.threads)
  command = worker_command(venv_python(args.peers_venv), args.threads)
  with Worker(command, worker_env(args.threads, args.omp_wait_policy)) as worker:
    header = {
      "machine": machine,
      "command": shlex.join(["python", "-m", TOOL, *argv]),
      "arguments": arguments,
      "jax": jax.__version__,
      "torch": worker.hello.get("torch"),
      "timm": worker.hello.get("timm"),
      "threads": args.threads,
      "omp_wait_policy": args.omp_wait_policy,
      "rounds": args.rounds,
      "host": throughput.machine(),
    }
    run_cases(cases, worker, args, header, stem)
  print(f"wrote {stem}.json and .md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
