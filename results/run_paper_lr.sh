#!/usr/bin/env bash
# Supplementary check: NF-ResNets of study 1 at the paper's learning-rate rule (0.1 * batch / 256).
set -u
PY=${PYTHON:-python}
$PY -m experiments.sweep --config=experiments/configs/fashion_mnist.py:table1 \
  --only=nf18_seed0,nf26_seed0,bn18_seed0 --set=optimizer.base_lr=0.1 --workdir=results/paper_lr/runs
