"""Fraud-detection metrics (SPEC §6): threshold-free, card-based and at an operating threshold.

Every function takes a frame of scored transactions with the canonical columns plus ``score``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from fraudlab.core import schema
from fraudlab.core.params import CostParams, EvaluateParams

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


def _decision_costs(scored: pd.DataFrame, costs: CostParams) -> tuple[np.ndarray, np.ndarray]:
    """Per row, what not alerting it costs (frauds) and what alerting it costs (legitimate)."""
    fraud = scored[schema.TX_FRAUD].to_numpy() == 1
    amount = scored[schema.TX_AMOUNT].to_numpy()
    missed = np.where(fraud, costs.missed_fraud + costs.missed_fraud_amount_share * amount, 0.0)
    return missed, np.where(fraud, 0.0, costs.false_alert)


def threshold_for_cost(scored: pd.DataFrame, costs: CostParams) -> float:
    """The score threshold (alert when score >= it) with the lowest total cost on ``scored``;
    among equal costs, the one raising fewest alerts. Above every score when alerting nothing
    is cheapest."""
    order = np.argsort(-scored[SCORE].to_numpy(), kind="stable")
    score = scored[SCORE].to_numpy()[order]
    missed, false_alert = (c[order] for c in _decision_costs(scored, costs))
    # total[i]: cost when the i highest-scored rows are alerted, i = 0..n
    total = missed.sum() - np.concatenate([[0.0], np.cumsum(missed)])
    total += np.concatenate([[0.0], np.cumsum(false_alert)])
    # A threshold cannot split rows of equal score: cut only between different scores.
    cut = np.ones(len(score) + 1, dtype=bool)
    cut[1:-1] = score[:-1] > score[1:]
    best = np.flatnonzero(cut)[np.argmin(total[cut])]
    return float(score[best - 1]) if best else float(np.nextafter(score[0], np.inf))


def threshold_metrics(
    scored: pd.DataFrame, threshold: float, costs: CostParams
) -> dict[str, float | int]:
    """Transaction-level precision, recall, F1, confusion counts and total cost when
    score >= threshold alerts; plus the mean number of cards alerted a day."""
    y_true = scored[schema.TX_FRAUD].to_numpy()
    y_pred = (scored[SCORE].to_numpy() >= threshold).astype(np.int8)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    alerted = scored.loc[y_pred == 1]
    cards_per_day = alerted.groupby(_day(alerted))[schema.CUSTOMER_ID].nunique()
    n_days = _day(scored).nunique()
    missed, false_alert = _decision_costs(scored, costs)
    cost = float(missed[y_pred == 0].sum() + false_alert[y_pred == 1].sum())
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
        "cost": cost,
        "cost_per_day": cost / n_days,
    }


def card_precision_key(k: int) -> str:
    """The metrics' key for Card Precision@k: every reader derives it from ``evaluate.top_k``."""
    return f"card_precision_at_{k}"


def ranking_metrics(scored: pd.DataFrame, k: int) -> dict[str, float]:
    """AUC ROC, Average Precision (step-wise) and Card Precision@k."""
    y_true, y_score = scored[schema.TX_FRAUD].to_numpy(), scored[SCORE].to_numpy()
    return {
        "auc_roc": float(roc_auc_score(y_true, y_score)),
        "average_precision": float(average_precision_score(y_true, y_score)),
        card_precision_key(k): card_precision_at_k(scored, k)[0],
    }


def mean_and_std(per_fold: list[dict[str, float]]) -> dict[str, dict]:
    """Mean and standard deviation (ddof 1; 0 for one fold) across folds of each metric."""
    frame = pd.DataFrame(per_fold)
    return {
        name: {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}
        for name, values in frame.items()
    }


def validation_metrics(scored: pd.DataFrame, fold_column: str, k: int) -> dict[str, dict]:
    """Mean and standard deviation (ddof 1) across folds of each ranking metric."""
    return mean_and_std(
        [ranking_metrics(rows, k) for _, rows in scored.groupby(fold_column, sort=True)]
    )


def operating_threshold(validation: pd.DataFrame, params: EvaluateParams) -> float:
    """The threshold chosen on validation scores, by alert budget or by cost."""
    if params.threshold == "cost":
        return threshold_for_cost(validation, params.costs)
    return threshold_for_alert_budget(validation, params.alert_budget_cards_per_day)


def evaluation_metrics(
    test: pd.DataFrame, validation: pd.DataFrame, *, fold_column: str, params: EvaluateParams
) -> dict[str, dict]:
    """Test and validation metrics; the operating threshold is chosen on validation scores
    (``params.threshold``) and then applied to the test period."""
    threshold = operating_threshold(validation, params)
    k = params.top_k
    return {
        "test": {
            **ranking_metrics(test, k),
            "at_threshold": threshold_metrics(test, threshold, params.costs),
        },
        "validation": {
            **validation_metrics(validation, fold_column, k),
            "at_threshold": threshold_metrics(validation, threshold, params.costs),
        },
    }
