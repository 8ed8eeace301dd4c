"""Monitoring, week by week after the test period: how far the model's inputs and scores moved
from the reference profile, and how well it ranks once a week's labels have matured.

A week's labels are mature when the data reach its end plus the label delay (as investigations
close in that time); until then its performance is reported as pending, never as a number. Weeks
are whole: a trailing part week would compare another mix of weekdays with the reference.
Every transaction of a week counts (the test period's removal of cards already known to be
compromised is an evaluation protocol, not what a deployed model sees).

Data drift is told apart from model decay: a week's inputs moved when a feature's statistic
reaches ``monitor.act``; its performance fell when its matured AP is ``monitor.decay`` below the
baseline's, the same model's AP on the test period's transactions counted the same way. Inputs
that move while performance holds are a shift the model absorbs; performance that falls while no
input moved is a change in what fraud looks like (concept drift), which only new labels show.
A matured week whose share of frauds differs from the baseline's (Fisher's exact test, p below
``monitor.label_shift_p``) is a label shift: frauds at a new rate or of a new kind, which the
inputs may not show at all (e.g. more terminals compromised, seen by the model's terminal rates
only a label delay later).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fraudlab.core import schema
from fraudlab.core.params import MonitorParams
from fraudlab.modeling.metrics import SCORE, card_precision_key, ranking_metrics
from fraudlab.monitoring.drift import Drift, ReferenceProfile, bin_shares, drift_columns

WEEK = pd.Timedelta(days=7)
SCORE_NAME = "score"  # the model's output, monitored beside its inputs


@dataclass(frozen=True)
class Week:
    number: int  # 1 = the first week after the test period
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive

    @property
    def label(self) -> str:
        return f"week_{self.number}"


def data_end(times: pd.Series) -> pd.Timestamp:
    """The day after the last transaction: where the data, and what is known, end."""
    return times.max().normalize() + pd.Timedelta(days=1)


def monitored_weeks(*, start: dt.date, end: pd.Timestamp) -> list[Week]:
    """The whole weeks from ``start`` up to ``end``."""
    first = pd.Timestamp(start)
    count = max(0, (end - first) // WEEK)
    return [Week(i + 1, first + i * WEEK, first + (i + 1) * WEEK) for i in range(count)]


def level(value: float, params: MonitorParams) -> str:
    return "act" if value >= params.act else "warn" if value >= params.warn else "ok"


def _statistic(result: Drift, params: MonitorParams) -> float:
    return getattr(result, params.statistic)


def week_drift(
    rows: pd.DataFrame, scores: np.ndarray, *, reference: ReferenceProfile, params: MonitorParams
) -> dict[str, dict]:
    """Per feature and for the score: PSI, KS, Wasserstein and the level of the statistic."""
    columns = {name: rows[name].to_numpy(dtype=np.float64) for name in reference.features}
    profiles = {**reference.features, SCORE_NAME: reference.score}
    found = drift_columns(profiles, {**columns, SCORE_NAME: scores})
    out = {}
    for name, result in found.items():
        out[name] = {
            "psi": result.psi,
            "ks": result.ks,
            "wasserstein": result.wasserstein,
            "mean": result.mean,
            "level": level(_statistic(result, params), params),
        }
    return out


def week_performance(
    rows: pd.DataFrame,
    scores: np.ndarray,
    *,
    week: Week,
    end: pd.Timestamp,
    delay_days: int,
    k: int,
) -> dict:
    """AP, AUC ROC and CP@k once the week's labels have matured by ``end``; pending before."""
    mature_on = week.end + pd.Timedelta(days=delay_days)
    if mature_on > end:
        return {"status": "pending", "labels_mature_on": str(mature_on.date())}
    scored = rows.assign(**{SCORE: scores})
    frauds = int(scored[schema.TX_FRAUD].sum())
    counts = {"frauds": frauds, "transactions": len(scored)}
    if frauds in (0, len(scored)):
        return {"status": "one class", **counts}
    return {"status": "mature", **counts, **ranking_metrics(scored, k)}


def baseline_performance(rows: pd.DataFrame, scores: np.ndarray, *, k: int) -> dict:
    """The model's performance on the test period, counted as a monitored week's is (every
    transaction): what a week's AP is compared with. ``{}`` when it has a single class."""
    frauds = int(rows[schema.TX_FRAUD].sum())
    if frauds in (0, len(rows)):
        return {}
    scored = rows.assign(**{SCORE: scores})
    return {"transactions": len(rows), "frauds": frauds, **ranking_metrics(scored, k)}


def performance_trend(performance: dict, baseline: dict, params: MonitorParams) -> str:
    """pending | held | fell | unknown (a one-class week, or no baseline to compare with)."""
    if performance["status"] == "pending":
        return "pending"
    if performance["status"] != "mature" or not baseline:
        return "unknown"
    drop = baseline["average_precision"] - performance["average_precision"]
    return "fell" if drop >= params.decay else "held"


def label_shift(performance: dict, baseline: dict, params: MonitorParams) -> dict | None:
    """For a matured week: its share of frauds against the baseline's, Fisher's exact p-value
    (scipy) and whether it is below ``label_shift_p``. None before the labels mature."""
    if performance["status"] not in ("mature", "one class") or not baseline:
        return None
    frauds, total = performance["frauds"], performance["transactions"]
    known, known_total = baseline["frauds"], baseline["transactions"]
    table = [[frauds, total - frauds], [known, known_total - known]]
    p_value = float(stats.fisher_exact(table).pvalue)
    return {
        "fraud_share": frauds / total,
        "baseline_fraud_share": known / known_total,
        "p_value": p_value,
        "shifted": p_value < params.label_shift_p,
    }


def diagnose(columns: dict[str, dict], trend: str) -> dict:
    """What moved in a week: its inputs (features at act), its score, its performance."""
    inputs = [
        name for name, found in columns.items() if name != SCORE_NAME and found["level"] == "act"
    ]
    score_moved = columns[SCORE_NAME]["level"] == "act"
    drifted, fell = bool(inputs) or score_moved, trend == "fell"
    kind = {
        (False, False): "stable",
        (True, False): "data drift",
        (False, True): "model decay",
        (True, True): "data drift and model decay",
    }[(drifted, fell)]
    return {"kind": kind, "inputs_moved": inputs, "score_moved": score_moved, "performance": trend}


@dataclass(frozen=True)
class _Context:
    """What every week is measured against."""

    reference: ReferenceProfile
    params: MonitorParams
    end: pd.Timestamp
    delay_days: int
    k: int
    baseline: dict


def _week_entry(rows: pd.DataFrame, scores: np.ndarray, *, week: Week, context: _Context) -> dict:
    columns = week_drift(rows, scores, reference=context.reference, params=context.params)
    performance = week_performance(
        rows, scores, week=week, end=context.end, delay_days=context.delay_days, k=context.k
    )
    trend = performance_trend(performance, context.baseline, context.params)
    labels = label_shift(performance, context.baseline, context.params)
    diagnosis = diagnose(columns, trend) | {"labels_shifted": bool(labels and labels["shifted"])}
    return {
        "start": str(week.start.date()),
        "end": str((week.end - pd.Timedelta(days=1)).date()),
        "transactions": len(rows),
        "drift": columns,
        "score_shares": bin_shares(scores, context.reference.score.edges).tolist(),
        "performance": performance,
        "labels": labels,
        "diagnosis": diagnosis,
    }


def monitoring_report(
    frame: pd.DataFrame,
    scores: np.ndarray,
    *,
    weeks: list[Week],
    end: pd.Timestamp,
    reference: ReferenceProfile,
    params: MonitorParams,
    delay_days: int,
    k: int,
    baseline: dict | None = None,
) -> dict:
    """The whole report: per week drift, performance and diagnosis, and the alert over all
    weeks (the data, ``frame`` and its ``scores``, end at ``end``; ``baseline``: the test
    period's performance, see ``baseline_performance``)."""
    context = _Context(reference, params, end, delay_days, k, baseline or {})
    times = frame[schema.TX_DATETIME]
    report_weeks = {}
    for week in weeks:
        inside = ((times >= week.start) & (times < week.end)).to_numpy()
        if not inside.any():
            report_weeks[week.label] = {"start": str(week.start.date()), "transactions": 0}
            continue
        report_weeks[week.label] = _week_entry(
            frame.loc[inside], scores[inside], week=week, context=context
        )
    drifted = {
        name
        for entry in report_weeks.values()
        for name, found in entry.get("drift", {}).items()
        if found["level"] == "act"
    }
    decayed = [
        label
        for label, entry in report_weeks.items()
        if entry.get("diagnosis", {}).get("performance") == "fell"
    ]
    shifted = [
        label
        for label, entry in report_weeks.items()
        if entry.get("diagnosis", {}).get("labels_shifted")
    ]
    order = [*reference.features, SCORE_NAME]
    return {
        "alert": bool(drifted),
        "drifted_features": [name for name in order if name in drifted],
        "decayed_weeks": decayed,
        "label_shift_weeks": shifted,
        "statistic": params.statistic,
        "warn": params.warn,
        "act": params.act,
        "decay": params.decay,
        "label_shift_p": params.label_shift_p,
        "top_k": k,
        "baseline": baseline or {},
        "weeks": report_weeks,
    }


def plot_tables(report: dict) -> dict[str, list[dict]]:
    """The weekly series DVC plots draw: each feature's statistic (long: one row per week and
    feature, as the feature names depend on params), the score's drift, and the performance of
    the matured weeks (pending weeks are left out, never drawn as zero)."""
    features, score, performance = [], [], []
    for label, entry in report["weeks"].items():
        if not entry["transactions"]:
            continue
        week = {"week": int(label.removeprefix("week_")), "start": entry["start"]}
        for name, found in entry["drift"].items():
            if name != SCORE_NAME:
                value = found[report["statistic"]]
                bounds = {"warn": report["warn"], "act": report["act"]}
                features.append({**week, "feature": name, "drift": value, **bounds})
        found = entry["drift"][SCORE_NAME]
        score.append({**week, **{s: found[s] for s in ("psi", "ks", "wasserstein")}})
        measured = entry["performance"]
        if measured["status"] == "mature":
            names = ("average_precision", "auc_roc")
            cp = measured[card_precision_key(report["top_k"])]
            performance.append({**week, **{n: measured[n] for n in names}, "card_precision": cp})
    return {"features.json": features, "score.json": score, "performance.json": performance}


def monitoring_summary(report: dict) -> dict:
    """The handful of figures a reviewer compares between runs (``dvc metrics diff``,
    ``dvc exp show``): whether an alert fired, the worst drift of any input or the score in
    any week, how many features and weeks are affected, and the latest matured week's AP
    against the baseline's. The full weekly detail stays in the report."""
    measured = [entry for _, entry in measured_weeks(report)]
    statistic = report["statistic"]
    drifts = [found for entry in measured for found in entry["drift"].values()]
    worst = max(drifts, key=lambda found: found[statistic], default=None)
    matured = [entry for entry in measured if entry["performance"]["status"] == "mature"]
    latest = matured[-1]["performance"] if matured else {}
    return {
        "alert": report["alert"],
        "worst_level": worst["level"] if worst else "ok",
        f"worst_{statistic}": worst[statistic] if worst else 0.0,
        "drifted_features": len(report["drifted_features"]),
        "weeks": len(report["weeks"]),
        "matured_weeks": len(matured),
        "decayed_weeks": len(report["decayed_weeks"]),
        "label_shift_weeks": len(report["label_shift_weeks"]),
        "baseline_average_precision": report["baseline"].get("average_precision"),
        "latest_matured_average_precision": latest.get("average_precision"),
    }


_ADVICE = {
    "stable": "Nothing to do: keep monitoring.",
    "data drift": (
        "The inputs moved but the matured performance held (or is still pending): the model "
        "absorbs this shift so far. Watch the pending weeks' labels before retraining."
    ),
    "model decay": (
        "Performance fell while no input moved past the act level: what fraud looks like "
        "changed (concept drift), which only new labels show. Retrain on recent labelled data "
        '(docs: "Retraining").'
    ),
    "data drift and model decay": (
        "The inputs moved and the matured performance fell with them: retrain on data from "
        'after the change (docs: "Retraining").'
    ),
}


def measured_weeks(report: dict) -> list[tuple[str, dict]]:
    return [(label, entry) for label, entry in report["weeks"].items() if entry["transactions"]]


def _worst(kinds: list[str]) -> str:
    order = ["stable", "data drift", "model decay", "data drift and model decay"]
    return max(kinds, key=order.index, default="stable")


def verdict(report: dict) -> dict:
    """The headline: the worst diagnosis over the weeks, the week it first appeared, and what
    to do about it."""
    weeks = measured_weeks(report)
    kind = _worst([entry["diagnosis"]["kind"] for _, entry in weeks])
    first = next((label for label, e in weeks if e["diagnosis"]["kind"] != "stable"), None)
    pending = [label for label, e in weeks if e["performance"]["status"] == "pending"]
    advice = _ADVICE[kind]
    unknown = kind == "stable" and bool(weeks) and len(pending) == len(weeks)
    if unknown:
        first_labels = weeks[0][1]["performance"]["labels_mature_on"]
        advice = (
            "No input and not the score moved past the act level, but no week's labels have "
            f"matured yet (the first on {first_labels}): performance is unknown until then."
        )
    shifted = report["label_shift_weeks"]
    if shifted:
        labels = report["weeks"][shifted[0]]["labels"]
        advice += (
            f" The share of frauds moved in {', '.join(shifted)} (from "
            f"{labels['baseline_fraud_share']:.2%} to {labels['fraud_share']:.2%} in "
            f"{shifted[0]}, Fisher p {labels['p_value']:.1e}): frauds at a new rate or of a new "
            "kind, which the inputs may not show; watch the matured performance and retrain on "
            "the new labels if it falls."
        )
    return {
        "kind": kind,
        "first_week": first,
        "pending_weeks": pending,
        "performance_unknown": unknown,  # stable inputs, but no week's labels matured yet
        "label_shift_weeks": shifted,
        "advice": advice,
    }


def fired(report: dict) -> bool:
    """Whether the report holds anything to act on: an alert, a decay or a label shift (what
    ``monitor.strict`` and ``fraudlab monitor --strict`` fail on)."""
    return bool(report["alert"] or report["decayed_weeks"] or report["label_shift_weeks"])
