"""Run xtrace-catch's benchmarks: ``make bench``, or ``.venv/bin/python bench/run.py [--only NAME] [--quick]``.

Each benchmark is a module in bench/ listed in MODULES, with ``run(*, quick: bool = False) -> str``
returning a markdown section. Sections go to stdout and to bench/results/<name>.md (gitignored),
each under a header naming the machine and the commit; progress goes to stderr.
The process is pinned to one CPU (``--cpu``, default the last allowed one) so a run is not
migrated mid-measurement. One benchmark also runs alone: ``.venv/bin/python bench/datapath.py --quick``.
See bench/README.md for how to read the numbers; the command line is bench/common.py's.
"""

from __future__ import annotations

import sys

import common

# Benchmark modules, in the order they run. Add new ones here.
MODULES = ["datapath", "variants", "collector", "export", "agent", "iperf"]


if __name__ == "__main__":
    sys.exit(common.main(MODULES, __doc__))
