"""Microbenchmarks of every op (DESIGN §6), installed as ``amc_kernels.benchmarks``.

``bench_<op>.py`` declares one op's sweep (sizes, fresh random inputs, analytic FLOPs and bytes,
peers); ``_harness.py`` measures it; ``_results.py`` writes the CSV and prints the table;
``plot.py`` draws the PNGs from the CSV. Run ``python benchmarks/bench_<op>.py --help`` in a
checkout, or ``amc-kernels bench`` anywhere the package is installed.
"""
