"""Benchmarks: step time, throughput, compile time and memory of the real training steps.

``python -m benchmarks.throughput`` measures one configuration,
``python -m benchmarks.suite`` runs the standard table and writes
``benchmarks/results/<machine>.md`` and ``.json``, ``python -m benchmarks.peak``
measures the machine's matrix-multiply peak. Not part of the test suite.
"""
