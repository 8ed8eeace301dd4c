"""Metrics on hand-made scored frames whose answers were computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from fraudlab.metrics import (
    card_precision_at_k,
    ranking_metrics,
    threshold_for_alert_budget,
    threshold_metrics,
)


def _scored(rows):
    frame = pd.DataFrame(rows, columns=["tx_datetime", "customer_id", "score", "tx_fraud"])
    return frame.assign(tx_datetime=pd.to_datetime(frame["tx_datetime"]))


DAYS = _scored(
    [
        ("2018-08-08 10:00", "A", 0.9, 1),
        ("2018-08-08 11:00", "B", 0.8, 0),
        ("2018-08-08 12:00", "C", 0.1, 1),
        ("2018-08-08 13:00", "D", 0.2, 1),  # D: one fraud at 0.2 and a legit one at 0.85
        ("2018-08-08 14:00", "D", 0.85, 0),
        ("2018-08-09 10:00", "A", 0.95, 1),  # A was detected on day 1: removed on day 2
        ("2018-08-09 11:00", "B", 0.7, 1),
        ("2018-08-09 12:00", "C", 0.6, 0),
        ("2018-08-09 13:00", "E", 0.5, 0),
    ]
)


def test_card_precision_groups_by_card_and_removes_detected_cards():
    # day 1 cards: A .9/1, D .85/1, B .8/0, C .1/1 -> top 2 = A, D: 2/2; detected {A, D}
    # day 2 without A, D: B .7/1, C .6/0, E .5/0 -> top 2 = B, C: 1/2
    mean, per_day = card_precision_at_k(DAYS, k=2)
    assert per_day == [1.0, 0.5]
    assert mean == 0.75


def test_card_precision_divides_by_k_even_when_fewer_cards():
    mean, per_day = card_precision_at_k(DAYS[DAYS["customer_id"] == "A"], k=4)
    assert per_day == [0.25, 0.0]  # day 2: A already detected, no card left to alert
    assert mean == 0.125


def test_threshold_for_alert_budget_is_the_median_daily_kth_card_score():
    # 2nd-best card score: day 1 = .85 (A .9, D .85), day 2 = .7 (A .95, B .7); median .775
    assert threshold_for_alert_budget(DAYS, cards_per_day=2) == pytest.approx(0.775)


def test_threshold_metrics_count_transactions_and_alerted_cards():
    got = threshold_metrics(DAYS, threshold=0.8)
    # alerts: A .9 (1), B .8 (0), D .85 (0), A .95 (1); misses: C .1, D .2, B .7
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 2, 3, 2)
    assert got["precision"] == 0.5
    assert got["recall"] == pytest.approx(0.4)
    assert got["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    assert got["alerted_cards_per_day"] == 2.0  # day 1: A, B, D; day 2: A


def test_ranking_metrics_of_a_perfect_and_a_reversed_ranking():
    perfect = DAYS.assign(score=DAYS["tx_fraud"] + 0.0)
    assert ranking_metrics(perfect, k=1)["auc_roc"] == 1.0
    assert ranking_metrics(perfect, k=1)["average_precision"] == 1.0
    reversed_ = DAYS.assign(score=1.0 - DAYS["tx_fraud"])
    assert ranking_metrics(reversed_, k=1)["auc_roc"] == 0.0
