"""Markdown tables and the performance-goal summary from a suite's JSON payload."""

from __future__ import annotations

from typing import Any

TIMM_224_IMAGES_PER_S = (6.4, 6.8)  # timm nf_resnet50, channels-last, on the benchmark machine.
TIMM_32_IMAGES_PER_S = (190.0, 210.0)
REFERENCE_COMPILE_S = {50: 4.3, 288: 18.0, 600: 45.0}  # Reference code's gradient step, same host.


def summary_line(r: dict[str, Any]) -> str:
  """One line per result, or its error."""
  if "error" in r:
    return f"ERROR {' '.join(r['error'])}"
  line = f"{r['label']}: compile {r['compile_s']:.1f} s"
  if "median_step_s" in r:
    line += f", step {r['median_step_s'] * 1e3:.0f} ms, {r['images_per_s']:.1f} img/s"
  return line + f", load {r['machine']['load_average']:.1f}"


def _step(results: dict[str, Any], name: str) -> float | None:
  return results.get(name, {}).get("median_step_s")


def _ratio(a: float | None, b: float | None) -> str:
  return f"{a / b:.2f}" if a and b else "n/a"


def throughput_table(results: dict[str, Any]) -> list[str]:
  lines = [
    "| case | step (ms) | images/s | GFLOP/s | % of matmul peak | compile (s) | peak RSS (MiB) "
    "| load avg |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in results.values():
    if "median_step_s" not in r:
      continue
    lines.append(
      f"| {r['label']} | {r['median_step_s'] * 1e3:.0f} | {r['images_per_s']:.1f} "
      f"| {r['achieved_flops_per_s'] / 1e9:.1f} | {100 * r['fraction_of_peak']:.0f} "
      f"| {r['compile_s']:.1f} | {r['peak_memory_mib']:.0f} | {r['machine']['load_average']:.1f} |"
    )
  return lines


def compile_table(results: dict[str, Any]) -> list[str]:
  lines = [
    "| depth | unrolled: lower + compile (s) | stacked: lower + compile (s) | reference code (s) |",
    "|---:|---:|---:|---:|",
  ]
  for depth, reference in REFERENCE_COMPILE_S.items():
    cells = []
    for layout in ("unrolled", "stacked"):
      r = results.get(f"compile_nf{depth}_{layout}", {})
      cells.append(
        f"{r['compile_s']:.1f} ({r['lower_s']:.1f} + {r['xla_compile_s']:.1f})"
        if "compile_s" in r
        else "n/a"
      )
    lines.append(f"| {depth} | {cells[0]} | {cells[1]} | {reference} |")
  return lines


def _compile(results: dict[str, Any], name: str) -> float | None:
  return results.get(name, {}).get("compile_s")


def goals_table(results: dict[str, Any]) -> list[str]:
  s = lambda name: _step(results, name)
  c = lambda name: _compile(results, name)
  ws, no_ws = s("nf50_train"), s("nf50_train_no_ws")
  ws_cost = f"{100 * (ws - no_ws) / ws:.1f}%" if ws and no_ws else "n/a"
  ips = lambda name: results.get(name, {}).get("images_per_s")
  fmt = lambda v: f"{v:.1f}" if v else "n/a"
  rows = [
    (
      "1. compile(600) / compile(50), train step",
      "<= 2.0",
      f"unrolled {_ratio(c('compile_nf600_unrolled'), c('compile_nf50_unrolled'))} "
      f"(288/50: {_ratio(c('compile_nf288_unrolled'), c('compile_nf50_unrolled'))}), "
      f"stacked {_ratio(c('compile_nf600_stacked'), c('compile_nf50_stacked'))}",
    ),
    (
      "1. stacked / unrolled NF-50 train step, 32 px b16 (runtime cost)",
      "-",
      _ratio(s("nf50_small_train_stacked"), s("nf50_small_train")),
    ),
    (
      "1. stacked / unrolled NF-50 train step, 224 px b16 (runtime cost)",
      "-",
      _ratio(s("nf50_train_stacked"), s("nf50_train")),
    ),
    ("2. NF-50 / BN-50 train step", "<= 0.95", _ratio(s("nf50_train"), s("bn50_train"))),
    ("2. NF-18 / BN-18 train step (32 px)", "-", _ratio(s("nf18_train"), s("bn18_train"))),
    ("2. WS share of NF-50 train step", "< 5%", ws_cost),
    (
      "3. NF-50 frozen eval / BN-50 folded eval",
      "<= 1.0",
      _ratio(s("nf50_eval_frozen"), s("bn50_eval_folded")),
    ),
    ("3. NF-50 live eval / BN-50 eval", "-", _ratio(s("nf50_eval"), s("bn50_eval"))),
    (
      "4. NF-50 train images/s, 224 px b16 (lax.conv only: `conv_impl=xla`)",
      "timm 6.4-6.8",
      f"{fmt(ips('nf50_train'))} ({fmt(ips('nf50_train_xla'))})",
    ),
    (
      "4. NF-50 train images/s, 32 px b128 (lax.conv only: `conv_impl=xla`)",
      "timm 190-210",
      f"{fmt(ips('nf50_32px_train'))} ({fmt(ips('nf50_32px_train_xla'))})",
    ),
    (
      "2. NF-50 / BN-50 train step, 32 px b128",
      "-",
      _ratio(s("nf50_32px_train"), s("bn50_32px_train")),
    ),
    ("5. bf16 / f32 NF-50 train step (CPU)", "-", _ratio(s("nf50_train_bf16"), s("nf50_train"))),
    ("5. bf16 / f32 NF-18 train step (CPU)", "-", _ratio(s("nf18_train_bf16"), s("nf18_train"))),
  ]
  lines = ["| goal | target | measured |", "|---|---|---|"]
  return lines + [f"| {g} | {t} | {m} |" for g, t, m in rows]


def markdown(payload: dict[str, Any]) -> str:
  """The results file: machine, goal summary, throughput and compile tables."""
  results = payload["results"]
  first = next((r for r in results.values() if "machine" in r), {"machine": {}})["machine"]
  devices = f"{first.get('device_count', '?')} x {first.get('device_kind', '?')}"
  minutes = payload["suite_wall_s"] / 60
  legacy = "python -m benchmarks.suite" + (" --full" if payload.get("full") else "")
  command = payload.get("command") or legacy  # Files from before the command was recorded.
  header = [
    f"# Benchmarks on `{payload['machine']}`"
    + (" (partial run)" if payload.get("only") is not None else ""),
    "",
    f"CPU: {first.get('cpu', '?')}, {first.get('cpu_count', '?')} cores; devices: {devices}; "
    f"jax {first.get('jax', '?')}; "
    f"XLA_FLAGS=`{first.get('xla_flags', '')}`.",
    f"Measured float32 matmul peak: {payload['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s. "
    f"Suite wall time: {minutes:.1f} min. Command: `{command}`.",
    "",
    "Step time: median of timed steps after warm-up (each step waits for its result). "
    "FLOPs: `nfresnet.count_macs` MACs x 2 (x 3 for a training step). Load avg: 1-minute "
    "load average when the case finished (2 cores: above 2 means shared).",
    "",
  ]
  if payload.get("only") is not None:
    header += [
      f"Partial run: only the {len(results)} case{'s' if len(results) != 1 else ''} matching"
      " `--only` "
      f"({', '.join(results)}); goals needing other cases read n/a.",
      "",
    ]
  header += ["## Goals", ""]
  body = goals_table(results) + ["", "## Throughput", ""] + throughput_table(results)
  body += ["", "## Compile time of the training step (NF-ResNet, 224 px, batch 16)", ""]
  body += compile_table(results)
  errors = [f"- {k}: {' '.join(v['error'])}" for k, v in results.items() if "error" in v]
  if errors:
    body += ["", "## Errors", ""] + errors
  return "\n".join(header + body) + "\n"
