#!/usr/bin/env bash
# Writes report.md, report.csv and report.png of each study from its runs (the protocol studies'
# reports are written by results/run_protocol.sh), then the results tables of README.md and
# docs/training.md (python -m experiments.studies.summary).
# Usage (from the repository root, after the run_*.sh scripts): bash results/make_reports.sh
set -eu
PY=${PYTHON:-python}
REPORT="$PY -m experiments.studies.report --force"
MEANSHIFT_ROWS=--rows=model_name,model.weight_standardization
$REPORT results/quickstart/runs --rows=model_name --out=results/quickstart
$REPORT results/short/table1/runs --rows=model.depth --cols=model_name --out=results/short/table1
$REPORT results/short/table2/runs --rows=train.batch_size --cols=model_name --out=results/short/table2
$REPORT results/short/meanshift/runs $MEANSHIFT_ROWS --out=results/short/meanshift
$REPORT results/short/activation/runs --rows=model.activation --out=results/short/activation
$REPORT results/paper_lr/runs --out=results/paper_lr
$REPORT results/longer/runs --out=results/longer
$REPORT results/longer/runs_meanshift $MEANSHIFT_ROWS --out=results/longer/meanshift
$REPORT results/longer/runs_meanshift_skipgain1_unit_stem $MEANSHIFT_ROWS \
  --out=results/longer/meanshift_skipgain1_unit_stem
$PY -m experiments.studies.summary --write README.md docs/training.md
