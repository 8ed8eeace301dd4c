"""Monitoring, week by week after the test period: how far the model's inputs and scores moved
from the reference profile, and how well it ranks once a week's labels have matured.

A week's labels are mature when the data reach its end plus the label delay (as investigations
close in that time); until then its performance is reported as pending, never as a number. Weeks
are whole: a trailing part week would compare another mix of weekdays with the reference.
Every transaction of a week counts (the test period's removal of cards already known to be
compromised is an evaluation protocol, not what a deployed model sees).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.drift import Drift, ReferenceProfile, drift
from fraudlab.metrics import SCORE, ranking_metrics
from fraudlab.params import MonitorParams

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
    out = {}
    for name, values in {**columns, SCORE_NAME: scores}.items():
        result = drift(profiles[name], values, name=name)
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
    if frauds in (0, len(scored)):
        return {"status": "one class", "frauds": frauds}
    return {"status": "mature", "frauds": frauds, **ranking_metrics(scored, k)}


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
) -> dict:
    """The whole report: per week drift and performance, and the alert over all weeks (the
    data, ``frame`` and its ``scores``, end at ``end``)."""
    times = frame[schema.TX_DATETIME]
    report_weeks, drifted = {}, set()
    for week in weeks:
        inside = ((times >= week.start) & (times < week.end)).to_numpy()
        rows, week_scores = frame.loc[inside], scores[inside]
        if not len(rows):
            report_weeks[week.label] = {"start": str(week.start.date()), "transactions": 0}
            continue
        columns = week_drift(rows, week_scores, reference=reference, params=params)
        drifted |= {name for name, found in columns.items() if found["level"] == "act"}
        report_weeks[week.label] = {
            "start": str(week.start.date()),
            "end": str((week.end - pd.Timedelta(days=1)).date()),
            "transactions": len(rows),
            "drift": columns,
            "performance": week_performance(
                rows, week_scores, week=week, end=end, delay_days=delay_days, k=k
            ),
        }
    order = [*reference.features, SCORE_NAME]
    return {
        "alert": bool(drifted),
        "drifted_features": [name for name in order if name in drifted],
        "statistic": params.statistic,
        "warn": params.warn,
        "act": params.act,
        "weeks": report_weeks,
    }
