"""The scoring service's Prometheus metrics.

With several worker processes, ``metrics_dir`` is prometheus_client's multiprocess directory
(the server sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers import this module), and a
scrape adds up every process's values; with one process the metrics live in its own registry.

Drift: each process keeps a ``DriftWindow`` of its recent transactions and publishes the
window's bin counts as gauges (summed over live processes) ``publish_every`` seconds after the
first round not yet published (a timer on the event loop, so at most once a period and never
later than a period after the last round), and at every scrape it serves; the scrape turns the
summed counts into the PSI of each feature and the score, and the share alerted. So a scoring
round only copies its rows into the window; the binning happens at publishing, in proportion to
the traffic since the last one, and another worker's window is at most ``publish_every`` seconds
old in a scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from fraudlab.monitoring.drift import DriftWindow

# sub-millisecond resolution where a scored request should land, up to the slow tail
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SCORE_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99,
    1.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class _Live:
    """Values read at scrape time: the model served and the history's size."""

    def __init__(self, metrics: ServiceMetrics, store: object) -> None:
        self.metrics = metrics
        self.store = store

    def collect(self) -> Iterable:
        if self.metrics.model is not None:
            info = InfoMetricFamily("fraudlab_model", "The model being served")
            info.add_metric([], self.metrics.model)
            yield info
        if self.store is not None:
            size = GaugeMetricFamily(
                "fraudlab_history_transactions", "Transactions in the history store"
            )
            size.add_metric([], self.store.count())
            yield size
            if hasattr(self.store, "disk_bytes"):  # a file; Redis reports its own memory
                disk = GaugeMetricFamily(
                    "fraudlab_history_disk_bytes", "History store size on disk (database and log)"
                )
                disk.add_metric([], self.store.disk_bytes())
                yield disk


class _Drift:
    """PSI per column and the share alerted, from the (summed) window gauges of ``source``."""

    def __init__(self, metrics: ServiceMetrics, source: CollectorRegistry) -> None:
        self.metrics = metrics
        self.source = source

    def collect(self) -> Iterable:
        window = self.metrics.window
        if window is None:
            return
        counts = np.zeros_like(window.counts)
        total = alerted = 0.0
        index = {name: j for j, name in enumerate(window.columns)}
        for family in self.source.collect():
            for sample in family.samples:
                if sample.name == "fraudlab_drift_window_bin":
                    j = index[sample.labels["column"]]
                    counts[j, int(sample.labels["bin"])] += round(sample.value)
                elif sample.name == "fraudlab_drift_window_transactions":
                    total += sample.value
                elif sample.name == "fraudlab_drift_window_alerted":
                    alerted += sample.value
        found = GaugeMetricFamily(
            "fraudlab_drift_psi",
            "PSI of each feature and the score over the recent-transactions window, against "
            "the reference profile (training)",
            labels=["column"],
        )
        for name, value in window.psi(counts).items():
            found.add_metric([name], value)
        yield found
        share = GaugeMetricFamily(
            "fraudlab_window_alert_share",
            "Share of the recent-transactions window scored at or above the threshold",
        )
        if total:
            share.add_metric([], alerted / total)
        yield share


class ServiceMetrics:
    def __init__(self, metrics_dir: str | None, *, publish_every: float = 1.0) -> None:
        self.metrics_dir = metrics_dir
        self.window: DriftWindow | None = None
        self.publish_every = publish_every
        self._timer: asyncio.TimerHandle | None = None
        # multiprocess: values go to files, a scrape builds a fresh registry from them
        self.registry = None if metrics_dir else CollectorRegistry()
        self.model: dict[str, str] | None = None
        registry = self.registry
        self._requests = Counter(
            "fraudlab_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "fraudlab_request_duration_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._scores = Histogram(
            "fraudlab_score", "Scores of newly scored transactions", buckets=SCORE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._decisions = Counter(
            "fraudlab_decisions",
            "Newly scored transactions by decision (score >= threshold: fraud)",
            ["decision"],
            registry=registry,
        )
        self._late = Counter(
            "fraudlab_late_transactions",
            "Transactions older than their customer's newest stored one (scored with what is "
            "stored)",
            registry=registry,
        )
        self._stale = Counter(
            "fraudlab_stale_rounds",
            "Scoring rounds computed again because another process wrote to the shared store "
            "between their read and their write",
            registry=registry,
        )
        self._labels = Counter(
            "fraudlab_labels", "Confirmed labels received", ["tx_fraud"], registry=registry
        )
        self._label_changes = Counter(
            "fraudlab_label_changes",
            "Labels that replaced another label of the same transaction (the latest counts)",
            ["from_label", "to_label"],
            registry=registry,
        )
        self._batch = Histogram(
            "fraudlab_scoring_round_transactions",
            "Transactions scored together in one round (concurrent requests share a round)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._window_bin = Gauge(
            "fraudlab_drift_window_bin",
            "Recent-transactions window: transactions per reference bin of each column",
            ["column", "bin"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._window_size = Gauge(
            "fraudlab_drift_window_transactions",
            "Transactions in the recent-transactions window",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._window_alerted = Gauge(
            "fraudlab_drift_window_alerted",
            "Transactions of the window scored at or above the threshold",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._store_up = Gauge(
            "fraudlab_store_up",
            "1 while the history store takes writes, 0 while writes are refused (503)",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._store_up.set(1)
        self._file_changed = Gauge(
            "fraudlab_served_file_changed",
            "1 when a served file (model, serving.json, reference profile) differs on disk from "
            "the copy being served (SIGHUP reloads it once dvc.lock records it)",
            ["file"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._cells: list[tuple[int, int, Gauge]] = []

    def watch(self, window: DriftWindow) -> None:
        """Keep ``window`` of the scored transactions and export its drift."""
        self.window = window
        self._cells = [
            (j, b, self._window_bin.labels(name, str(b)))
            for j, (name, shares) in enumerate(zip(window.columns, window.shares, strict=True))
            for b in range(len(shares))
        ]
        self.publish()

    def publish(self) -> None:
        """Write this process's window counts into the gauges a scrape sums."""
        window = self.window
        if window is None:
            return
        counts = window.counts
        for j, b, cell in self._cells:
            cell.set(int(counts[j, b]))
        self._window_size.set(window.filled)
        self._window_alerted.set(window.alerted)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _publish_soon(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (scoring driven directly): publish now
            self.publish()
            return
        self._timer = loop.call_later(self.publish_every, self.publish)

    def describe_model(self, scorer: object) -> None:
        self.model = {
            "model_version": scorer.model_version,
            "family": scorer.model.family,
            "threshold": repr(scorer.config.threshold),
            "threshold_rule": scorer.config.threshold_rule,
        }

    def served_file_changed(self, path: str, changed: bool) -> None:
        self._file_changed.labels(Path(path).name).set(1 if changed else 0)

    def store_up(self, reason: str | None) -> None:
        self._store_up.set(0 if reason else 1)

    def request(self, endpoint: str, *, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, str(status)).inc()
        self._latency.labels(endpoint).observe(seconds)

    def batch_size(self, n: int) -> None:
        self._batch.observe(n)

    def scored(
        self,
        scores: np.ndarray,
        *,
        threshold: float,
        late: int,
        features: np.ndarray,
        stale: int = 0,
    ) -> None:
        if self.window is not None and len(scores):
            self.window.add(features, scores)
            self._publish_soon()
        for score in scores.tolist():
            self._scores.observe(score)
        frauds = int((scores >= threshold).sum())
        if frauds:
            self._decisions.labels("fraud").inc(frauds)
        if len(scores) - frauds:
            self._decisions.labels("legit").inc(len(scores) - frauds)
        if late:
            self._late.inc(late)
        if stale:
            self._stale.inc(stale)

    def labels(self, pairs: list[tuple[int, int]], *, changed: list[tuple[int, int, int]]) -> None:
        for _, before, after in changed:
            self._label_changes.labels(str(before), str(after)).inc()
        frauds = sum(fraud for _, fraud in pairs)
        if frauds:
            self._labels.labels("1").inc(frauds)
        if len(pairs) - frauds:
            self._labels.labels("0").inc(len(pairs) - frauds)

    def exposition(self, store: object) -> tuple[bytes, str]:
        self.publish()  # the scraping process's window is always current
        source = CollectorRegistry()
        if self.registry is None:
            MultiProcessCollector(source, path=self.metrics_dir)
        else:
            source.register(_Forward(self.registry))
        registry = CollectorRegistry()
        registry.register(_Forward(source))
        registry.register(_Live(self, store))
        registry.register(_Drift(self, source))
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """Collects another registry's metrics (so live values can be added per scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable:
        return self.registry.collect()
