"""The service's Prometheus metrics in one process, without a server: counts computed by hand,
read back through the Prometheus client's own parser."""

from __future__ import annotations

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from fraudlab.serving.metrics import ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    body, _content_type = metrics.exposition(store=None)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_requests_decisions_and_labels_are_counted_as_given():
    metrics = ServiceMetrics(None)
    metrics.request("score", status=200, seconds=0.002)
    metrics.request("score", status=200, seconds=0.004)
    metrics.request("score", status=422, seconds=0.001)
    # scores 0.1, 0.5, 0.9 against a threshold of 0.5: two frauds (>=), one legit; one late
    metrics.scored(np.array([0.1, 0.5, 0.9]), threshold=0.5, late=1, features=np.zeros((3, 2)))
    metrics.labels([(1, 1), (2, 0), (3, 0)], changed=[(3, 1, 0)])
    found = _samples(metrics)
    requests = "fraudlab_requests_total"
    assert found[(requests, (("endpoint", "score"), ("status", "200")))] == 2
    assert found[(requests, (("endpoint", "score"), ("status", "422")))] == 1
    assert found[("fraudlab_decisions_total", (("decision", "fraud"),))] == 2
    assert found[("fraudlab_decisions_total", (("decision", "legit"),))] == 1
    assert found[("fraudlab_late_transactions_total", ())] == 1
    assert found[("fraudlab_labels_total", (("tx_fraud", "1"),))] == 1
    assert found[("fraudlab_labels_total", (("tx_fraud", "0"),))] == 2
    changes = "fraudlab_label_changes_total"
    assert found[(changes, (("from_label", "1"), ("to_label", "0")))] == 1
    assert found[("fraudlab_score_count", ())] == 3
    assert found[("fraudlab_score_sum", ())] == 1.5


def test_no_drift_is_exported_before_a_window_is_watched():
    found = _samples(ServiceMetrics(None))
    assert not [name for name, _labels in found if name.startswith("fraudlab_drift_psi")]
