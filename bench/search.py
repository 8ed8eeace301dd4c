"""Where a search's time goes: a grid through `fraudlab search` (queued DVC experiments), its
wall time, and per experiment the time in the model's fits (from each experiment's log) against
everything else (DVC's workspace and checkout, process starts and imports, reading the split,
evaluation, commit).

Runs in this repository after `dvc repro`; the experiments it queues are removed afterwards.

    python bench/search.py                    # the 18-point XGBoost grid of search.yaml, 2 workers
    python bench/search.py --family xgboost --jobs 1 --threads 2
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from fraudlab.experiments.search import load_space

ROOT = Path(__file__).resolve().parents[1]
_FIT = re.compile(r"fitted on \d+ rows(?:, scored \d+)? in ([\d.]+) s")


def _dvc(*args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=ROOT, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return done.stdout


def fit_seconds(log_text: str) -> float:
    """The seconds an experiment's log says its fits (and fold scoring) took."""
    return sum(float(seconds) for seconds in _FIT.findall(log_text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="xgboost")
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (2)")
    parser.add_argument("--threads", type=int, default=1, help="train.n_jobs per experiment (1)")
    parser.add_argument("--keep", action="store_true", help="keep the experiments (dvc exp show)")
    args = parser.parse_args()
    points = 1
    for values in load_space(ROOT / "search.yaml").grids[args.family].values():
        points *= len(values)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fraudlab", "search", "--jobs", str(args.jobs), "--threads",
         str(args.threads), "--poll", "5", "grid", args.family],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    print(done.stdout)  # the leaderboard
    names = re.findall(r"^\|\s*\d+\s*\|\s*(\S+)\s*\|", done.stdout, flags=re.MULTILINE)
    names = [name for name in names if not name.endswith("(committed)")]
    fits = [fit_seconds(_dvc("queue", "logs", name)) for name in names]
    per_experiment = wall * args.jobs / max(len(names), 1)
    fit = sum(fits) / max(len(fits), 1)
    print(f"{args.family} grid: {points} points, {len(names)} finished, {args.jobs} worker(s), "
          f"train.n_jobs {args.threads}")  # fmt: skip
    print(f"wall time: {wall:.0f} s")
    print(f"per experiment (worker-seconds): {per_experiment:.1f} s, of which fits {fit:.1f} s; "
          f"overhead {per_experiment - fit:.1f} s")  # fmt: skip
    if not args.keep:
        _dvc("exp", "remove", *names)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        sys.exit(done.returncode)


if __name__ == "__main__":
    main()
