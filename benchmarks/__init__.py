"""Microbenchmarks of every op (docs/design.md#6-benchmarks), installed as
``amc_kernels.benchmarks``.

``bench_<op>.py`` declares one op's sweep (sizes, fresh random inputs, analytic FLOPs and bytes,
peers) with the types of ``_harness.py``; ``_plan.py`` turns it into cases and runs them,
``_measure.py`` measures one case (``_timing.py``, ``_memory.py``) in the process that
``_isolation.py`` picks, ``_roofline.py`` measures the device's peaks and ``_cli.py`` holds the
command lines; ``_results.py`` writes the CSV and prints the table; ``plot.py`` draws the PNGs
from the CSV. Run ``python benchmarks/bench_<op>.py --help`` in a
checkout, or ``amc-kernels bench`` anywhere the package is installed.
"""
