"""Throughput of `fraudlab verify` on this repository's DVC cache and outputs.

    dvc repro && python bench/verify.py      # the reference size: every output of dvc.lock

Hashes every cache object and workspace output dvc.lock points to, with one and with two
threads, three times each (the files are then in the page cache: the figures are the hashing
rate, not the disk's), and prints files, megabytes, the best time and MB/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from fraudlab.integrity.lock import locked_outputs, read_lock
from fraudlab.integrity.verify import cache_dir, dvc_file_outputs, plan, tree_size, verify

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.repo).resolve()
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    outputs = locked_outputs(read_lock(root / "dvc.lock"), dvc_yaml) + dvc_file_outputs(root)
    checks = plan(outputs, root=root, cache=cache_dir(root))
    print(f"{'threads':>7} {'files':>6} {'MB':>8} {'seconds':>8} {'MB/s':>7} {'damaged':>8}")
    for jobs in (1, 2):
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            findings = verify(checks, jobs=jobs)
            best = min(best, time.perf_counter() - started)
        hashed = [f for f in findings if f.status != "missing"]
        megabytes = sum(tree_size(f.check.path) for f in hashed) / 1e6
        damaged = sum(f.status == "damaged" for f in findings)
        print(
            f"{jobs:>7} {len(hashed):>6} {megabytes:>8.1f} {best:>8.2f} "
            f"{megabytes / best:>7.0f} {damaged:>8}"
        )


if __name__ == "__main__":
    main()
