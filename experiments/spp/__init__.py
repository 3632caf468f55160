"""Signal Propagation Plots from the command line (paper Section 3): ``python -m experiments.spp``.

``models`` parses ``--models`` specs and ``--checkpoint`` runs into measurements,
``plot`` draws and writes them, ``__main__`` is the command line.
"""
