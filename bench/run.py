"""model-starter benchmarks: one command runs every figure and writes bench/RESULTS.md.
(The soak test is bench/soak.py; its section of RESULTS.md is kept when this rewrites it.)

    .venv/bin/python bench/run.py [--quick] [--no-profile] [--only NAME ...]

Every figure is a module bench/fig_<name>.py with one function ``(Settings) -> list[Row]``
registered with ``@figure("name", order=N)`` (bench/harness.py); this driver imports every
such module, runs the figures in order and writes the table (bench/driver.py). Add a figure
by adding a module. A figure also runs alone: ``.venv/bin/python -m bench.fig_swap --quick``
(like ``--only swap``: it writes bench/out/RESULTS-only.md, never the full table).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, this folder is on the path, not the repository
    sys.path.insert(0, str(ROOT))

from bench.driver import discover, main  # noqa: E402 - the repository root must be importable first

if __name__ == "__main__":
    discover()
    sys.exit(main())
