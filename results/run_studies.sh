#!/usr/bin/env bash
# Runs the four CPU-scale 0.1-epoch screens of docs/reproducing.md into results/short/<study>/runs
# (rerun to resume: finished entries are skipped). Reports: bash results/make_reports.sh.
# Usage (from the repository root): NFRESNET_DATA_DIR=../shared/data bash results/run_studies.sh
set -u
PY=${PYTHON:-python}
CFG=experiments/configs/fashion_mnist.py
for study in meanshift activation table2 table1; do
  start=$(date +%s)
  $PY -m experiments.studies.sweep --config=$CFG:${study}_short --workdir=results/short/$study/runs
  echo "$study: sweep wall time $(( $(date +%s) - start )) s"
done
