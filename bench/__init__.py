"""model-starter benchmarks: one module per figure (``bench/fig_*.py``), a shared harness, and
``bench/run.py``, the driver that runs them all and writes bench/RESULTS.md."""
