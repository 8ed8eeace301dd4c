"""Where a search's time goes: a grid of search.yaml through `fraudlab search`, its wall time,
and per configuration the time in the model's fits against everything else.

    python bench/search.py                     # the 18-point XGBoost grid, warm engine, 2 workers
    python bench/search.py --engine queue      # every point a queued DVC experiment, and where
                                               # one experiment's time goes, stage by stage

The warm engine prints its own account (validation fits against the rest, per configuration);
this adds the confirmation of the best as a DVC experiment, spread over the grid. The queue
engine's breakdown runs the train and evaluate stages' commands directly (outputs in a scratch
directory) to split an experiment's time into DVC's part (queueing, temporary workspace,
checkout, hashing, commit), process starts and imports, fits, the rest of training, and
evaluation with its plots.

Runs in this repository after `dvc repro`; the experiments it makes are removed afterwards.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fraudlab.experiments.search import load_space

ROOT = Path(__file__).resolve().parents[1]
_FIT = re.compile(r"fitted on \d+ rows(?:, scored \d+)? in ([\d.]+) s")
_WARM = re.compile(
    r"(\d+) configurations validated in (\d+) s on \d+ worker\(s\): fits (\d+) worker-seconds"
)
_CONFIRMED = re.compile(r"confirming .* as DVC experiment\(s\) (.+)$", flags=re.MULTILINE)


def _dvc(*args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=ROOT, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return done.stdout


def fit_seconds(log_text: str) -> float:
    """The seconds a stage log says its fits (and fold scoring) took."""
    return sum(float(seconds) for seconds in _FIT.findall(log_text))


def _timed(*command: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stderr


def stage_breakdown(threads: int) -> dict[str, float]:
    """One experiment's stage commands run directly: seconds in imports, fits, the rest of
    training and the evaluation (scratch outputs; the committed model for evaluate)."""
    python = sys.executable
    imports = {
        stage: _timed(python, "-c", f"import fraudlab.stages.{stage}")[0]
        for stage in ("train", "evaluate")
    }
    with tempfile.TemporaryDirectory() as scratch:
        params = Path(scratch) / "params.yaml"
        text = (ROOT / "params.yaml").read_text()
        params.write_text(re.sub(r"(?m)^(  n_jobs:) \d+", rf"\1 {threads}", text, count=1))
        train, log = _timed(
            python, "-m", "fraudlab.stages.train", "data/split/train.parquet", "--params",
            str(params), "--folds", "data/split/folds.parquet", "--model", f"{scratch}/m.joblib",
            "--validation-scores", f"{scratch}/v.parquet", "--reference-profile",
            f"{scratch}/r.json",
        )  # fmt: skip
        evaluate, _ = _timed(
            python, "-m", "fraudlab.stages.evaluate", "models/model.joblib", "--test",
            "data/split/test.parquet", "--validation-scores", "data/predictions/validation.parquet",
            "--test-scores", f"{scratch}/t.parquet", "--live-dir", f"{scratch}/live",
            "--serving", f"{scratch}/s.json",
        )  # fmt: skip
    fits = fit_seconds(log)
    return {
        "process starts and imports (train, evaluate)": sum(imports.values()),
        "fits and fold scoring": fits,
        "rest of train: reading, final model's profile, writing": train - fits - imports["train"],
        "evaluate: scoring, metrics, plots, writing": evaluate - imports["evaluate"],
    }


def _grid_points(family: str) -> int:
    points = 1
    for values in load_space(ROOT / "search.yaml").grids[family].values():
        points *= len(values)
    return points


def _report_queue(
    done: subprocess.CompletedProcess, wall: float, args: argparse.Namespace
) -> list[str]:
    names = re.findall(r"^\|\s*\d+\s*\|\s*(\S+)\s*\|", done.stdout, flags=re.MULTILINE)
    names = [name for name in names if not name.endswith("(committed)")]
    fits = [fit_seconds(_dvc("queue", "logs", name)) for name in names]
    per_experiment = wall * args.jobs / max(len(names), 1)
    fit = sum(fits) / max(len(fits), 1)
    print(f"per experiment (worker-seconds): {per_experiment:.1f} s, of which fits {fit:.1f} s; "
          f"overhead {per_experiment - fit:.1f} s")  # fmt: skip
    stages = stage_breakdown(args.threads)
    # the grid's fits, not the committed configuration's: they vary with depth and trees
    stages["fits and fold scoring"] = fit
    dvc_part = per_experiment - sum(stages.values())
    parts = {"DVC: queue, workspace, checkout, hashing, commit": dvc_part} | stages
    print("per experiment, part by part (the grid's fits from the logs, the other stage work "
          "timed alone on the committed params, DVC's part the rest):")  # fmt: skip
    for name, seconds in parts.items():
        print(f"  {name:<58} {seconds:6.1f} s")
    return names


def _report_warm(
    done: subprocess.CompletedProcess, wall: float, args: argparse.Namespace
) -> list[str]:
    found = _WARM.search(done.stderr)
    if not found:
        return []
    points, warm_wall, fits = (int(value) for value in found.groups())
    confirmed = _CONFIRMED.search(done.stderr)
    names = confirmed.group(1).split(", ") if confirmed else []
    confirm_wall = wall - warm_wall
    confirm_fits = sum(fit_seconds(_dvc("queue", "logs", name)) for name in names)
    print(f"ranking (warm workers): {warm_wall} s; confirming the best as DVC experiment(s) and "
          f"reporting: {confirm_wall:.0f} s, of which fits {confirm_fits:.0f} s")  # fmt: skip
    ranked = warm_wall * args.jobs / points - fits / points
    confirming = (confirm_wall - confirm_fits) / points
    print(f"per configuration (worker-seconds): fits {fits / points:.1f} s; overhead beyond the "
          f"fits {ranked:.1f} s in ranking, {ranked + confirming:.1f} s with the confirmation's "
          "overhead spread over the grid")  # fmt: skip
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="xgboost")
    parser.add_argument("--engine", choices=["warm", "queue"], default="warm")
    parser.add_argument("--jobs", type=int, default=2, help="workers (2)")
    parser.add_argument("--threads", type=int, default=1, help="train.n_jobs per configuration (1)")
    parser.add_argument("--keep", action="store_true", help="keep the experiments (dvc exp show)")
    args = parser.parse_args()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fraudlab", "search", "--engine", args.engine, "--jobs",
         str(args.jobs), "--threads", str(args.threads), "--poll", "5", "grid", args.family],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    print(done.stdout)  # the leaderboard
    print(f"{args.family} grid: {_grid_points(args.family)} points, engine {args.engine}, "
          f"{args.jobs} worker(s), train.n_jobs {args.threads}")  # fmt: skip
    print(f"wall time: {wall:.0f} s")
    report = _report_queue if args.engine == "queue" else _report_warm
    names = report(done, wall, args)
    if names and not args.keep:
        _dvc("exp", "remove", *names)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        sys.exit(done.returncode)


if __name__ == "__main__":
    main()
