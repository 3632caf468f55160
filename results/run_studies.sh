#!/usr/bin/env bash
# Runs the four CPU-scale studies (docs/reproducing.md) and writes their reports.
# Usage (from the repository root): NFRESNET_DATA_DIR=../shared/data bash results/run_studies.sh
set -u
PY=${PYTHON:-python}
CFG=experiments/configs/fashion_mnist.py
for study in meanshift activation table2 table1; do
  start=$(date +%s)
  $PY -m experiments.sweep --config=$CFG:$study --workdir=results/$study/runs
  echo "$study: sweep wall time $(( $(date +%s) - start )) s"
done
