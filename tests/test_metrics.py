"""Metrics on hand-made scored frames whose answers were computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from fraudlab.core.params import CostParams
from fraudlab.modeling.metrics import (
    card_precision_at_k,
    ranking_metrics,
    threshold_for_alert_budget,
    threshold_for_cost,
    threshold_metrics,
)

COSTS = CostParams(missed_fraud=1.0, missed_fraud_amount_share=0.5, false_alert=3.0)


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
).assign(tx_amount=[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0])


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
    got = threshold_metrics(DAYS, threshold=0.8, costs=COSTS)
    # alerts: A .9 (1), B .8 (0), D .85 (0), A .95 (1); misses: C .1, D .2, B .7
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 2, 3, 2)
    assert got["precision"] == 0.5
    assert got["recall"] == pytest.approx(0.4)
    assert got["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    assert got["alerted_cards_per_day"] == 2.0  # day 1: A, B, D; day 2: A
    # missed C 30, D 40, B 70: 3 x 1 + 0.5 x 140; false alerts B .8, D .85: 2 x 3
    assert got["cost"] == 79.0
    assert got["cost_per_day"] == 39.5


def _chain(rows):
    """(score, fraud, amount) rows on one day."""
    frame = pd.DataFrame(rows, columns=["score", "tx_fraud", "tx_amount"])
    return frame.assign(tx_datetime=pd.Timestamp("2018-08-08"), customer_id=range(len(frame)))


@pytest.mark.parametrize(
    ("false_alert", "expected"),
    [
        # alerting the top i rows costs: i=0 110, 1: 10, 2: 10+f, 3: 2f, 4: 3f, 5: 3f+... (f=20)
        (20.0, 0.9),
        # f=5: i=0 110, 1: 10, 2: 15, 3: 5, 4: 10, 5: 15
        (5.0, 0.7),
    ],
)
def test_cost_threshold_minimizes_total_cost(false_alert, expected):
    rows = _chain([(0.9, 1, 100.0), (0.8, 0, 1.0), (0.7, 1, 10.0), (0.6, 0, 1.0), (0.5, 0, 1.0)])
    costs = CostParams(missed_fraud=0.0, missed_fraud_amount_share=1.0, false_alert=false_alert)
    threshold = threshold_for_cost(rows, costs)
    assert threshold == expected
    others = [threshold_metrics(rows, t, costs)["cost"] for t in rows["score"]]
    assert threshold_metrics(rows, threshold, costs)["cost"] == min(others)


def test_cost_threshold_never_splits_equal_scores_and_may_alert_nothing():
    costs = CostParams(missed_fraud=0.0, missed_fraud_amount_share=1.0, false_alert=5.0)
    tied = _chain([(0.9, 1, 100.0), (0.9, 0, 1.0), (0.5, 0, 1.0)])
    # alerting only the fraud of the tie would cost 0, but no threshold separates the two
    assert threshold_for_cost(tied, costs) == 0.9
    assert threshold_metrics(tied, 0.9, costs)["cost"] == 5.0
    legit_on_top = _chain([(0.9, 0, 1.0), (0.8, 1, 1.0)])  # alerting anything costs more
    threshold = threshold_for_cost(legit_on_top, costs)
    assert threshold > 0.9
    assert threshold_metrics(legit_on_top, threshold, costs)["tp"] == 0


def test_ranking_metrics_of_a_perfect_and_a_reversed_ranking():
    perfect = DAYS.assign(score=DAYS["tx_fraud"] + 0.0)
    assert ranking_metrics(perfect, k=1)["auc_roc"] == 1.0
    assert ranking_metrics(perfect, k=1)["average_precision"] == 1.0
    reversed_ = DAYS.assign(score=1.0 - DAYS["tx_fraud"])
    assert ranking_metrics(reversed_, k=1)["auc_roc"] == 0.0
