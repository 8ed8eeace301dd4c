"""Fraud-detection metrics (SPEC §6): threshold-free, card-based and at an operating threshold.

Every function takes a frame of scored transactions with the canonical columns plus ``score``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from fraudlab import schema

SCORE = "score"


def _day(frame: pd.DataFrame) -> pd.Series:
    return frame[schema.TX_DATETIME].dt.floor("D")


def _cards_of_day(day_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per card: its highest score and whether any of its transactions is a fraud, ranked
    by score (ties: lower card id first, so the ranking never depends on row order)."""
    cards = day_rows.groupby(schema.CUSTOMER_ID, sort=True).agg(
        score=(SCORE, "max"), fraud=(schema.TX_FRAUD, "max")
    )
    return cards.sort_values(SCORE, ascending=False, kind="stable")


def card_precision_at_k(scored: pd.DataFrame, k: int) -> tuple[float, list[float]]:
    """Card Precision@k: per day, the share of the k highest-scored cards that are compromised.

    Cards found compromised on an earlier day (in a previous top k) are removed from later days,
    as investigators would have blocked them. Returns the mean over days and the per-day values.
    """
    detected: set = set()
    per_day = []
    for _, day_rows in scored.groupby(_day(scored), sort=True):
        cards = _cards_of_day(day_rows[~day_rows[schema.CUSTOMER_ID].isin(detected)])
        top = cards.head(k)
        compromised = top.index[top["fraud"] == 1]
        per_day.append(len(compromised) / k)
        detected.update(compromised)
    return float(np.mean(per_day)), per_day


def threshold_for_alert_budget(scored: pd.DataFrame, cards_per_day: int) -> float:
    """Score threshold that raises about ``cards_per_day`` card alerts a day: the median over days
    of the score of the day's ``cards_per_day``-th highest card (its lowest card on a smaller day).
    """
    per_day = [
        _cards_of_day(day_rows)[SCORE].head(cards_per_day).min()
        for _, day_rows in scored.groupby(_day(scored), sort=True)
    ]
    return float(np.median(per_day))


def threshold_metrics(scored: pd.DataFrame, threshold: float) -> dict[str, float | int]:
    """Transaction-level precision, recall, F1 and confusion counts when score >= threshold alerts;
    plus the mean number of cards alerted a day."""
    y_true = scored[schema.TX_FRAUD].to_numpy()
    y_pred = (scored[SCORE].to_numpy() >= threshold).astype(np.int8)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    alerted = scored.loc[y_pred == 1]
    cards_per_day = alerted.groupby(_day(alerted))[schema.CUSTOMER_ID].nunique()
    n_days = _day(scored).nunique()
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "alerted_cards_per_day": float(cards_per_day.sum() / n_days),
    }


def ranking_metrics(scored: pd.DataFrame, k: int) -> dict[str, float]:
    """AUC ROC, Average Precision (step-wise) and Card Precision@k."""
    y_true, y_score = scored[schema.TX_FRAUD].to_numpy(), scored[SCORE].to_numpy()
    return {
        "auc_roc": float(roc_auc_score(y_true, y_score)),
        "average_precision": float(average_precision_score(y_true, y_score)),
        f"card_precision_at_{k}": card_precision_at_k(scored, k)[0],
    }


def validation_metrics(scored: pd.DataFrame, fold_column: str, k: int) -> dict[str, dict]:
    """Mean and standard deviation (ddof 1) across folds of each ranking metric."""
    per_fold = pd.DataFrame(
        [ranking_metrics(rows, k) for _, rows in scored.groupby(fold_column, sort=True)]
    )
    return {
        name: {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}
        for name, values in per_fold.items()
    }


def evaluation_metrics(
    test: pd.DataFrame, validation: pd.DataFrame, *, fold_column: str, k: int, cards_per_day: int
) -> dict[str, dict]:
    """Test and validation metrics; the operating threshold is chosen on validation scores
    (an alert budget of ``cards_per_day`` cards a day) and then applied to the test period."""
    threshold = threshold_for_alert_budget(validation, cards_per_day)
    return {
        "test": {
            **ranking_metrics(test, k),
            "at_threshold": threshold_metrics(test, threshold),
        },
        "validation": {
            **validation_metrics(validation, fold_column, k),
            "at_threshold": threshold_metrics(validation, threshold),
        },
    }
