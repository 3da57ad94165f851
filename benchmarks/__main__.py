"""``python -m benchmarks SUITE [--device auto|host|cuda] [--quick | --smoke] [--out DIR] [options]``:
the shared harness's command line (``benchmarks.common``; ``--help`` for the suites and their options)."""

from __future__ import annotations

import sys

from benchmarks.common import main

if __name__ == "__main__":
    sys.exit(main())
