#!/usr/bin/env bash
# Supplementary runs (after the four studies): the same configs trained longer, one seed each.
set -u
PY=${PYTHON:-python}
CFG=experiments/configs/fashion_mnist.py
start=$(date +%s)
$PY -m experiments.sweep --config=$CFG:table1 --only=nf18_seed0,bn18_seed0 \
  --set=train.num_epochs=1.0 --workdir=results/longer/runs
echo "table1 longer: sweep wall time $(( $(date +%s) - start )) s"
start=$(date +%s)
$PY -m experiments.sweep --config=$CFG:meanshift --only=nf50_seed0,he50_seed0,bn50_seed0 \
  --set=train.num_epochs=0.5 --workdir=results/longer/runs_meanshift
echo "meanshift longer: sweep wall time $(( $(date +%s) - start )) s"
