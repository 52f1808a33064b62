"""Benchmarks of issue 6: ``asmamba bench compare`` (every matcher side by side), ``asmamba bench scaling``
(latency and memory against image size) and ``asmamba bench ablations`` (the kickoff plan's four questions).

Each measurement runs in a child process of its own, so that peak memory belongs to it; results are JSON files
written atomically, and a rerun skips what is already measured (``--force`` measures again).
"""
