"""Run a module as ``python -m`` would, then print the process's peak resident memory.

    python bench/peak.py fraudlab.stages.validate data/raw/transactions.parquet ...

The figure is VmHWM from /proc/self/status, which belongs to this process's own address space.
``ru_maxrss`` of a child is not: Linux carries the parent's high-water mark over the fork and
exec, so a benchmark parent that holds data inflates every child's figure.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path

PREFIX = "peak-resident-KiB:"


def _report() -> None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(PREFIX, line.split()[1], file=sys.stderr)


if __name__ == "__main__":
    atexit.register(_report)
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
