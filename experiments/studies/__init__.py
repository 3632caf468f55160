"""Studies: run a config's sweep (``sweep``) and tabulate and plot its runs (``report``, ``plot``).

python -m experiments.studies.sweep --config=FILE.py:SWEEP --workdir=ROOT
python -m experiments.studies.report ROOT --rows=... --cols=...
"""
