#!/usr/bin/env bash
# Writes report.md, report.csv and report.png of each study (run after results/run_studies.sh).
set -eu
PY=${PYTHON:-python}
$PY -m experiments.report results/table1/runs --rows=model.depth --cols=model_name --out=results/table1
$PY -m experiments.report results/table2/runs --rows=train.batch_size --cols=model_name --out=results/table2
$PY -m experiments.report results/meanshift/runs --rows=model_name,model.weight_standardization --out=results/meanshift
$PY -m experiments.report results/activation/runs --rows=model.activation --out=results/activation
