#!/usr/bin/env bash
# Trains the two quick-start configs (NF-ResNet-18 and BN-ResNet-V2-18 on the embedded digits,
# offline, deterministic) into results/quickstart/runs. Reports: bash results/make_reports.sh.
# Usage (from the repository root): bash results/run_quickstart.sh
set -eu
PY=${PYTHON:-python}
CFG=experiments/configs/quickstart.py
$PY -m experiments.main --config=$CFG --workdir=results/quickstart/runs/nf
$PY -m experiments.main --config=$CFG:model=bn --workdir=results/quickstart/runs/bn
