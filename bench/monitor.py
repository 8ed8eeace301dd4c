"""Monitoring's costs: drift of a million rows against a million-row reference, and what the
scoring service's drift window adds to a scoring round.

    dvc repro && python bench/monitor.py [--rows 1000000] [--workers 2]

Drift: the reference is the first ``--rows`` transactions of the reference data's features
(data/features/transactions.parquet) with the committed model's scores, the current sample the
last ``--rows`` (drawn with replacement when the data hold fewer); every feature and the score
get PSI, KS and Wasserstein (``monitoring.drift.drift_columns``), best of three runs, after the
reference profile is built once (timed separately). Service: a ``ServiceMetrics`` with and
without a ``DriftWindow`` of 10,000 transactions records rounds of 1 and of 1,000 scored
transactions (features of the test period); the difference is the monitoring's share of a round.
The publishing of the window's counts (at most once a second) and a whole /metrics exposition
with the PSI are timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fraudlab.modeling.artifact import load_model
from fraudlab.modeling.pipeline import predict_scores
from fraudlab.monitoring.drift import DriftWindow, drift_columns, reference_profile
from fraudlab.serving.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]


def best_of(runs: int, job) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        job()
        best = min(best, time.perf_counter() - started)
    return best


def per_call_us(job, *, calls: int) -> float:
    """Median over five batches of ``calls`` calls, in microseconds per call."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            job()
        batches.append((time.perf_counter() - started) / calls * 1e6)
    return float(np.median(batches))


def drift_figures(frame: pd.DataFrame, scores: np.ndarray, names: list[str], args) -> None:
    rows = args.rows
    rng = np.random.default_rng(0)
    current = np.arange(len(frame) - rows, len(frame))
    if current[0] < 0:
        current = rng.integers(0, len(frame), size=rows)
    reference_rows = np.arange(min(rows, len(frame)))
    started = time.perf_counter()
    reference = reference_profile(
        {n: frame[n].to_numpy(dtype=np.float64)[reference_rows] for n in names},
        scores=scores[reference_rows],
    )
    built = time.perf_counter() - started
    columns = {n: frame[n].to_numpy(dtype=np.float64)[current] for n in names}
    columns["score"] = scores[current]
    profiles = {**reference.features, "score": reference.score}
    print(
        f"reference profile of {len(reference_rows):,} rows x {len(profiles)} columns: "
        f"{built:.2f} s (once, in the train stage)"
    )
    for workers in sorted({1, args.workers}):
        seconds = best_of(3, lambda w=workers: drift_columns(profiles, columns, workers=w))
        print(
            f"drift of {rows:,} current rows, {len(columns)} columns (PSI, KS, Wasserstein), "
            f"{workers} thread(s): {seconds:.3f} s (target < 1 s on 2 cores)"
        )

    def with_scipy() -> None:
        for name, values in columns.items():
            stand_in = np.asarray(profiles[name].quantiles)
            stats.ks_2samp(stand_in, values)
            stats.wasserstein_distance(stand_in, values)

    seconds = best_of(1, with_scipy)
    print(f"for comparison, scipy's ks_2samp and wasserstein_distance alone: {seconds:.2f} s")


class Rounds:
    """Successive rounds of ``size`` scored transactions, as the service's batcher records them."""

    def __init__(self, matrix: np.ndarray, scores: np.ndarray, size: int) -> None:
        self.matrix, self.scores, self.size, self.at = matrix, scores, size, 0

    def record(self, metrics: ServiceMetrics) -> None:
        start = self.at = (self.at + self.size) % (len(self.scores) - self.size)
        end = start + self.size
        metrics.scored(
            self.scores[start:end], threshold=0.5, late=0, features=self.matrix[start:end]
        )


async def service_figures(frame: pd.DataFrame, scores: np.ndarray, names: list[str]) -> None:
    """On an event loop, as in the service: the window's publishing is a timer there."""
    reference = reference_profile(
        {n: frame[n].to_numpy(dtype=np.float64)[:200_000] for n in names}, scores=scores[:200_000]
    )
    matrix = frame[names].to_numpy(dtype=np.float64)[-20_000:]
    tail = scores[-20_000:]
    for size in (1, 1000):
        plain, watched = ServiceMetrics(None), ServiceMetrics(None)
        watched.watch(DriftWindow(reference, features=names, size=10_000, threshold=0.5))
        rounds = Rounds(matrix, tail, size)
        calls = 2000 if size == 1 else 50
        without = per_call_us(lambda m=plain, r=rounds: r.record(m), calls=calls)
        with_window = per_call_us(lambda m=watched, r=rounds: r.record(m), calls=calls)
        extra = with_window - without
        window = watched.window
        alone = per_call_us(
            lambda w=window, r=rounds: w.add(r.matrix[: r.size], r.scores[: r.size]), calls=calls
        )
        print(
            f"round of {size:>4}: the window's add alone {alone:,.1f} us; the round's metrics "
            f"{without:,.0f} us without the window, {with_window:,.0f} us with it "
            f"(+{extra:,.0f} us, within this machine's noise for large rounds)"
        )
    at = [0]

    def publish_after_a_second() -> None:
        """A second's traffic at 1,000 transactions/s, then the publishing (only it is timed
        apart from the copy of the rows, ~30 us)."""
        at[0] = (at[0] + 1000) % (len(tail) - 1000)
        watched.window.add(matrix[at[0] : at[0] + 1000], tail[at[0] : at[0] + 1000])
        watched.publish()

    publish = per_call_us(publish_after_a_second, calls=50)
    exposition = per_call_us(lambda: watched.exposition(None), calls=50)
    print(
        f"publishing the window after 1,000 new transactions (once a second on the event loop; "
        f"binning them, taking out the rows they overwrote, setting the gauges): {publish:,.0f} us"
    )
    print(f"a /metrics exposition with the PSI of {len(names) + 1} columns: {exposition:,.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="reference and current rows")
    parser.add_argument("--workers", type=int, default=2, help="threads for the drift")
    args = parser.parse_args()
    os.chdir(ROOT)
    model = load_model("models/model.joblib", lock_path="dvc.lock")
    names = list(model.features)
    frame = pd.read_parquet("data/features/transactions.parquet", columns=names)
    scores = predict_scores(model.pipeline, frame, features=names)
    print(f"data: {len(frame):,} transactions, {len(names)} features; {os.cpu_count()} cores")
    drift_figures(frame, scores, names, args)
    asyncio.run(service_figures(frame, scores, names))


if __name__ == "__main__":
    main()
