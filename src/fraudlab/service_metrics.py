"""The scoring service's Prometheus metrics.

With several worker processes, ``metrics_dir`` is prometheus_client's multiprocess directory
(the server sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers import this module), and a
scrape adds up every process's values; with one process the metrics live in its own registry.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

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
            disk = GaugeMetricFamily(
                "fraudlab_history_disk_bytes", "History store size on disk (database and log)"
            )
            disk.add_metric([], self.store.disk_bytes())
            yield disk


class ServiceMetrics:
    def __init__(self, metrics_dir: str | None) -> None:
        self.metrics_dir = metrics_dir
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
        self._labels = Counter(
            "fraudlab_labels", "Confirmed labels received", ["tx_fraud"], registry=registry
        )
        self._batch = Histogram(
            "fraudlab_scoring_round_transactions",
            "Transactions scored together in one round (concurrent requests share a round)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

    def describe_model(self, scorer: object) -> None:
        self.model = {
            "model_version": scorer.model_version,
            "family": scorer.model.family,
            "threshold": repr(scorer.config.threshold),
            "threshold_rule": scorer.config.threshold_rule,
        }

    def request(self, endpoint: str, *, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, str(status)).inc()
        self._latency.labels(endpoint).observe(seconds)

    def batch_size(self, n: int) -> None:
        self._batch.observe(n)

    def scored(self, scores: np.ndarray, *, threshold: float, late: int) -> None:
        for score in scores.tolist():
            self._scores.observe(score)
        frauds = int((scores >= threshold).sum())
        if frauds:
            self._decisions.labels("fraud").inc(frauds)
        if len(scores) - frauds:
            self._decisions.labels("legit").inc(len(scores) - frauds)
        if late:
            self._late.inc(late)

    def labels(self, pairs: list[tuple[int, int]]) -> None:
        frauds = sum(fraud for _, fraud in pairs)
        if frauds:
            self._labels.labels("1").inc(frauds)
        if len(pairs) - frauds:
            self._labels.labels("0").inc(len(pairs) - frauds)

    def exposition(self, store: object) -> tuple[bytes, str]:
        if self.registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.metrics_dir)
        else:
            registry = CollectorRegistry()
            registry.register(_Forward(self.registry))
        registry.register(_Live(self, store))
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """Collects another registry's metrics (so live values can be added per scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable:
        return self.registry.collect()
