#!/usr/bin/env bash
# Runs one study of the reproduction protocol (docs/reproducing.md) end to end, resuming where
# it stopped: the tuning sweep and `tune` until no cell's best rate is at a grid edge, the seeds
# sweep, the report and its check.
# Usage (from the repository root): NFRESNET_DATA_DIR=../shared/data bash results/run_protocol.sh STUDY
# STUDY: table1, table2 (after table1), meanshift, activation, large_batch (Fashion-MNIST) or
# regnet (CIFAR-10); large_batch ends with its analysis (experiments.studies.large_batch).
# SWEEP_SHARDS=N runs N sweeps side by side (--shard=K/N), each pinned to core K when there are
# that many cores and `taskset` exists: on 2 cores two pinned single-core runs train 1.28x the
# images per second of one run on both (results/README.md, "Compute plan").
set -euo pipefail
study=${1:?usage: bash results/run_protocol.sh table1|table2|meanshift|activation|large_batch|regnet}
PY=${PYTHON:-python}
CFG=experiments/configs/fashion_mnist.py
case $study in
  table1) rows=(--rows=model.depth,model.dropout_rate --cols=model_name) ;;
  table2) rows=(--rows=train.batch_size --cols=model_name) ;;
  meanshift) rows=(--rows=model_name,model.weight_standardization,model.scale_activations) ;;
  activation) rows=(--rows=model.activation,model.scale_activations) ;;
  large_batch) rows=(--rows=train.batch_size --cols=model_name,optimizer.agc_clip) ;;
  regnet) rows=(--rows=model_name); CFG=experiments/configs/cifar10.py ;;
  *) echo "error: unknown study '$study'; allowed: table1, table2, meanshift, activation, large_batch, regnet" >&2; exit 2 ;;
esac
# A sweep exits 1 when an entry did not finish. A tuning grid's highest rate may diverge
# (recorded as diverged; `tune` ranks it last), and in the large-batch study runs at the largest
# rates are expected to diverge (counted as unstable): there it goes on; else it stops here.
shards=${SWEEP_SHARDS:-1}
if ! [[ "$shards" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: SWEEP_SHARDS=$shards is not allowed: a positive integer (1: one sweep)" >&2
  exit 2
fi
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' TERM INT  # Each sweep stops its run cleanly.
sweep() {
  local stage=$1 rc=0 k code pin
  shift
  pids=()
  for ((k = 0; k < shards; k++)); do
    pin=""
    if [ "$shards" -gt 1 ] && [ "$shards" -le "$(nproc)" ] && command -v taskset > /dev/null; then
      pin="taskset -c $k"
    fi
    $pin $PY -m experiments.studies.sweep "$@" --shard="$k/$shards" &
    pids+=("$!")
  done
  for k in "${!pids[@]}"; do
    code=0
    wait "${pids[$k]}" || code=$?
    [ "$code" -le "$rc" ] || rc=$code
  done
  if [ "$rc" -eq 1 ] && { [ "$stage" = tuning ] || [ "$study" = large_batch ]; }; then
    echo "$study $stage: some entries failed (diverged rates are part of the grid); going on"
  elif [ "$rc" -ne 0 ]; then
    exit "$rc"
  fi
}
if [ "$study" != table2 ]; then
  for round in 1 2 3; do  # The grid, then at most two rates beyond an edge.
    sweep tuning --config="$CFG:${study}_tune" --workdir="results/$study/tuning"
    out=$($PY -m experiments.studies.tune "results/$study/tuning" --out="results/$study")
    echo "$out"
    grep -q "grid edge" <<<"$out" || break
    [ "$round" -lt 3 ] || { echo "error: $study: best rate still at a grid edge" >&2; exit 1; }
  done
fi
sweep runs --config="$CFG:$study" --workdir="results/$study/runs"
$PY -m experiments.studies.report --force "results/$study/runs" "${rows[@]}" --out="results/$study"
$PY -m experiments.studies.report --check "results/$study"
if [ "$study" = large_batch ]; then
  $PY -m experiments.studies.large_batch "results/$study"
fi
