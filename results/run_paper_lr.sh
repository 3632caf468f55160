#!/usr/bin/env bash
# Supplementary run of docs/reproducing.md: study table1's depth-18/26 NF and depth-18 BN runs at
# the paper's learning-rate rule (0.1 * batch / 256), one seed each.
# Usage (from the repository root): NFRESNET_DATA_DIR=../shared/data bash results/run_paper_lr.sh
set -u
PY=${PYTHON:-python}
$PY -m experiments.studies.sweep --config=experiments/configs/fashion_mnist.py:table1_short \
  --only=nf18_seed0,nf26_seed0,bn18_seed0 --set=optimizer.base_lr=0.1 --workdir=results/paper_lr/runs
