#!/usr/bin/env bash
# Supplementary runs of docs/reproducing.md, one seed each: study table1 at 1 epoch, study
# meanshift at 0.5 epoch, and study meanshift with skip gains initialised to 1.
# Usage (from the repository root): NFRESNET_DATA_DIR=../shared/data bash results/run_longer.sh
set -u
PY=${PYTHON:-python}
CFG=experiments/configs/fashion_mnist.py
start=$(date +%s)
$PY -m experiments.studies.sweep --config=$CFG:table1_short --only=nf18_seed0,bn18_seed0 \
  --set=train.num_epochs=1.0 --workdir=results/longer/runs
echo "table1 longer: sweep wall time $(( $(date +%s) - start )) s"
start=$(date +%s)
$PY -m experiments.studies.sweep --config=$CFG:meanshift_short --only=nf50_seed0,he50_seed0,bn50_seed0 \
  --set=train.num_epochs=0.5 --workdir=results/longer/runs_meanshift
echo "meanshift longer: sweep wall time $(( $(date +%s) - start )) s"
start=$(date +%s)
$PY -m experiments.studies.sweep --config=$CFG:meanshift_short --only=nf50_seed0,he50_seed0 \
  --set=model.skip_gain_init=1.0 --workdir=results/longer/runs_meanshift_skipgain1_unit_stem
echo "meanshift skip gain 1: sweep wall time $(( $(date +%s) - start )) s"
