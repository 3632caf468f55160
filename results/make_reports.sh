#!/usr/bin/env bash
# Writes report.md, report.csv and report.png of every study from its runs, then the results
# tables of README.md and docs/training.md (python -m experiments.studies.summary).
# Usage (from the repository root, after the run_*.sh scripts): bash results/make_reports.sh
set -eu
PY=${PYTHON:-python}
REPORT="$PY -m experiments.studies.report --force"
MEANSHIFT_ROWS=--rows=model_name,model.weight_standardization
$REPORT results/quickstart/runs --rows=model_name --out=results/quickstart
$REPORT results/table1/runs --rows=model.depth --cols=model_name --out=results/table1
$REPORT results/table2/runs --rows=train.batch_size --cols=model_name --out=results/table2
$REPORT results/meanshift/runs $MEANSHIFT_ROWS --out=results/meanshift
$REPORT results/activation/runs --rows=model.activation --out=results/activation
$REPORT results/paper_lr/runs --out=results/paper_lr
$REPORT results/longer/runs --out=results/longer
$REPORT results/longer/runs_meanshift $MEANSHIFT_ROWS --out=results/longer/meanshift
$REPORT results/longer/runs_meanshift_skipgain1_unit_stem $MEANSHIFT_ROWS \
  --out=results/longer/meanshift_skipgain1_unit_stem
$PY -m experiments.studies.summary --write README.md docs/training.md
