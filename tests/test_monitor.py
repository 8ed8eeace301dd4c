"""Monitoring's pure parts on hand-made weeks: which weeks, which level, pending or mature."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fraudlab import schema
from fraudlab.drift import reference_profile
from fraudlab.monitor import (
    Week,
    data_end,
    level,
    monitored_weeks,
    monitoring_report,
    week_performance,
)
from fraudlab.params import MonitorParams

PARAMS = MonitorParams(statistic="psi", warn=0.1, act=0.25, strict=False)


def test_only_whole_weeks_up_to_the_day_after_the_last_transaction_are_monitored():
    end = data_end(pd.Series(pd.to_datetime(["2018-06-01 10:00", "2018-06-13 23:59"])))
    assert end == pd.Timestamp("2018-06-14")
    weeks = monitored_weeks(start=dt.date(2018, 5, 31), end=end)
    assert [(w.start, w.end) for w in weeks] == [
        (pd.Timestamp("2018-05-31"), pd.Timestamp("2018-06-07")),
        (pd.Timestamp("2018-06-07"), pd.Timestamp("2018-06-14")),
    ]
    assert len(monitored_weeks(start=dt.date(2018, 5, 31), end=pd.Timestamp("2018-06-13"))) == 1
    assert monitored_weeks(start=dt.date(2018, 5, 31), end=pd.Timestamp("2018-05-01")) == []


@pytest.mark.parametrize(("value", "expected"), [(0.0, "ok"), (0.1, "warn"), (0.25, "act")])
def test_levels_start_at_their_bound(value, expected):
    assert level(value, PARAMS) == expected


def _rows(n: int, *, frauds: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.TX_DATETIME: pd.Timestamp("2018-06-01") + pd.to_timedelta(np.arange(n), "min"),
            schema.CUSTOMER_ID: np.arange(n),
            schema.TX_FRAUD: np.r_[np.ones(frauds, int), np.zeros(n - frauds, int)],
        }
    )


def test_performance_waits_for_the_label_delay():
    week = Week(1, pd.Timestamp("2018-05-31"), pd.Timestamp("2018-06-07"))
    rows, scores = _rows(10, frauds=2), np.linspace(1, 0, 10)
    pending = week_performance(rows, scores, week=week, end=pd.Timestamp("2018-06-13"),
                               delay_days=7, k=5)  # fmt: skip
    assert pending == {"status": "pending", "labels_mature_on": "2018-06-14"}
    mature = week_performance(rows, scores, week=week, end=pd.Timestamp("2018-06-14"),
                              delay_days=7, k=5)  # fmt: skip
    assert mature["status"] == "mature"
    assert mature["average_precision"] == 1.0  # the two frauds score highest
    no_fraud = week_performance(_rows(10, frauds=0), scores, week=week,
                                end=pd.Timestamp("2018-07-01"), delay_days=7, k=5)  # fmt: skip
    assert no_fraud == {"status": "one class", "frauds": 0}


def test_the_report_names_the_columns_that_moved_and_only_those():
    rng = np.random.default_rng(0)
    reference = reference_profile(
        {"amount": rng.normal(50, 10, 5000), "count": rng.poisson(3, 5000).astype(float)},
        scores=rng.uniform(size=5000),
    )
    n = 3000
    frame = _rows(n, frauds=30).assign(
        amount=rng.normal(65, 10, n),  # 1.5 standard deviations up
        count=rng.poisson(3, n).astype(float),
    )
    week = Week(1, pd.Timestamp("2018-06-01"), pd.Timestamp("2018-06-08"))
    report = monitoring_report(frame, rng.uniform(size=n), weeks=[week],
                               end=pd.Timestamp("2018-06-30"), reference=reference,
                               params=PARAMS, delay_days=7, k=10)  # fmt: skip
    assert report["alert"]
    assert report["drifted_features"] == ["amount"]
    drift = report["weeks"]["week_1"]["drift"]
    assert drift["amount"]["level"] == "act"
    assert drift["count"]["level"] == "ok"
    assert drift["score"]["level"] == "ok"
    assert drift["amount"]["wasserstein"] == pytest.approx(1.5, abs=0.1)
