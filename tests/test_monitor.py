"""Monitoring's pure parts on hand-made weeks: which weeks, which level, pending or mature."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from fraudlab.cli import main
from fraudlab.core import schema
from fraudlab.core.params import MonitorParams
from fraudlab.monitoring.drift import reference_profile
from fraudlab.monitoring.page import drift_heatmap, render_html, score_figure
from fraudlab.monitoring.status import status_text
from fraudlab.monitoring.weekly import (
    Week,
    data_end,
    diagnose,
    label_shift,
    level,
    monitored_weeks,
    monitoring_report,
    monitoring_summary,
    performance_trend,
    plot_tables,
    verdict,
    week_performance,
)

PARAMS = MonitorParams(
    statistic="psi", warn=0.1, act=0.25, decay=0.1, label_shift_p=0.001, strict=False
)


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
    assert no_fraud == {"status": "one class", "frauds": 0, "transactions": 10}


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


def _performance(ap: float) -> dict:
    return {"status": "mature", "average_precision": ap, "auc_roc": 0.9,
            "card_precision_at_10": 0.2, "frauds": 5}  # fmt: skip


@pytest.mark.parametrize(
    ("performance", "baseline", "expected"),
    [
        (
            {"status": "pending", "labels_mature_on": "2018-07-01"},
            {"average_precision": 0.7},
            "pending",
        ),
        (_performance(0.53), {"average_precision": 0.625}, "held"),
        (_performance(0.5), {"average_precision": 0.625}, "fell"),
        (_performance(0.2), {}, "unknown"),  # no baseline (a one-class test period)
        ({"status": "one class", "frauds": 0}, {"average_precision": 0.7}, "unknown"),
    ],
)
def test_performance_falls_once_ap_is_decay_below_the_baseline(performance, baseline, expected):
    assert performance_trend(performance, baseline, PARAMS) == expected


@pytest.mark.parametrize(
    ("amount", "score", "trend", "kind"),
    [
        ("ok", "ok", "held", "stable"),
        ("act", "ok", "held", "data drift"),
        ("warn", "act", "pending", "data drift"),  # the score moved: the inputs did, together
        ("ok", "ok", "fell", "model decay"),
        ("act", "act", "fell", "data drift and model decay"),
    ],
)
def test_the_diagnosis_tells_data_drift_from_model_decay(amount, score, trend, kind):
    columns = {"amount": {"level": amount}, "count": {"level": "ok"}, "score": {"level": score}}
    found = diagnose(columns, trend)
    assert found["kind"] == kind
    assert found["inputs_moved"] == (["amount"] if amount == "act" else [])
    assert found["score_moved"] == (score == "act")


def _two_week_report(
    *, shift: float, frauds_follow_amount: bool, end: str = "2018-07-01", weeks: int = 2
) -> dict:
    """Week 1 like the reference; week 2 with amounts ``shift`` standard deviations up. The
    model scores by amount; frauds are the large amounts, or (concept drift) random rows."""
    rng = np.random.default_rng(1)
    amounts = rng.normal(50, 10, 5000)
    reference = reference_profile({"amount": amounts}, scores=(amounts - 20) / 60)
    n = 2000
    week_amounts = np.r_[rng.normal(50, 10, n), rng.normal(50 + 10 * shift, 10, n)]
    minutes = np.arange(2 * n) * (14 * 24 * 60 / (2 * n))  # spread over the two weeks
    frame = pd.DataFrame(
        {
            schema.TX_DATETIME: pd.Timestamp("2018-06-01") + pd.to_timedelta(minutes, "min"),
            schema.CUSTOMER_ID: np.arange(2 * n),
            "amount": week_amounts,
        }
    )
    large = week_amounts > np.quantile(week_amounts[:n], 0.98)
    random = rng.uniform(size=2 * n) < 0.02
    frame[schema.TX_FRAUD] = np.where(
        np.arange(2 * n) < n, large, large if frauds_follow_amount else random
    ).astype(int)
    day = pd.Timedelta(days=1)
    first = pd.Timestamp("2018-06-01")
    weeks = [Week(i + 1, first + 7 * i * day, first + 7 * (i + 1) * day) for i in range(weeks)]
    scores = (frame["amount"].to_numpy() - 20) / 60
    # the first week's: the largest amounts are the frauds, 2 % of them
    baseline = {"average_precision": 1.0, "frauds": 40, "transactions": 2000}
    return monitoring_report(frame, scores, weeks=weeks, end=pd.Timestamp(end),
                             reference=reference, params=PARAMS, delay_days=7, k=10,
                             baseline=baseline)  # fmt: skip


def test_inputs_that_move_with_frauds_that_follow_them_are_data_drift_alone():
    report = _two_week_report(shift=1.5, frauds_follow_amount=True)
    assert report["weeks"]["week_1"]["diagnosis"]["kind"] == "stable"
    assert report["weeks"]["week_2"]["diagnosis"]["kind"] == "data drift"
    assert report["decayed_weeks"] == []
    assert report["drifted_features"] == ["amount", "score"]


def test_frauds_that_stop_following_the_inputs_are_model_decay_without_drift():
    report = _two_week_report(shift=0.0, frauds_follow_amount=False)
    second = report["weeks"]["week_2"]
    assert second["diagnosis"]["kind"] == "model decay"
    assert second["performance"]["average_precision"] < 0.9
    assert report["decayed_weeks"] == ["week_2"]
    assert not report["alert"]


def test_plot_series_leave_pending_weeks_out_and_carry_the_levels():
    report = _two_week_report(shift=1.5, frauds_follow_amount=True)
    report["weeks"]["week_2"]["performance"] = {"status": "pending", "labels_mature_on": "x"}
    tables = plot_tables(report)
    assert [(r["week"], r["feature"]) for r in tables["features.json"]] == [
        (1, "amount"),
        (2, "amount"),
    ]
    second = report["weeks"]["week_2"]["drift"]["amount"]["psi"]
    assert tables["features.json"][1] == {"week": 2, "start": "2018-06-08", "feature": "amount",
                                          "drift": second, "warn": 0.1, "act": 0.25}  # fmt: skip
    assert [r["week"] for r in tables["score.json"]] == [1, 2]
    assert [r["week"] for r in tables["performance.json"]] == [1]  # never a zero for week 2
    assert tables["performance.json"][0]["card_precision"] == report["weeks"]["week_1"][
        "performance"]["card_precision_at_10"]  # fmt: skip


def _reference_shares(report: dict) -> list[float]:
    bins = len(next(iter(report["weeks"].values()))["score_shares"]) if report["weeks"] else 11
    return [1 / bins] * bins


def test_the_page_leads_with_the_verdict_and_escapes_names():
    report = _two_week_report(shift=0.0, frauds_follow_amount=False)
    page = render_html(report, reference_shares=_reference_shares(report), model_md5="0" * 32)
    assert '<h2 id="verdict">Model decay from week_2 (2018-06-08)</h2>' in page
    assert "concept drift" in page
    assert page.count("data:image/png;base64,") == 3
    renamed = _two_week_report(shift=1.5, frauds_follow_amount=True)
    for entry in renamed["weeks"].values():
        entry["drift"]["<i>x</i>"] = entry["drift"].pop("amount")
        entry["diagnosis"]["inputs_moved"] = ["<i>x</i>"]
    renamed["drifted_features"] = ["<i>x</i>", "score"]
    page = render_html(renamed, reference_shares=_reference_shares(renamed), model_md5="0" * 32)
    assert "<i>x</i>" not in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page


def test_a_page_without_a_whole_week_says_so_without_figures():
    report = _two_week_report(shift=0.0, frauds_follow_amount=True)
    report["weeks"] = {}
    page = render_html(report, reference_shares=_reference_shares(report), model_md5="0" * 32)
    assert '<h2 id="verdict">Stable</h2>' in page
    assert "0 whole weeks monitored" in page
    assert "data:image/png" not in page


@pytest.mark.parametrize(
    ("frauds", "shifted"), [(42, False), (80, True), (10, True)], ids=["same", "double", "quarter"]
)
def test_a_matured_week_whose_share_of_frauds_moved_is_a_label_shift(frauds, shifted):
    performance = {"status": "mature", "frauds": frauds, "transactions": 1000}
    baseline = {"frauds": 40, "transactions": 1000}
    found = label_shift(performance, baseline, PARAMS)
    assert found["fraud_share"] == frauds / 1000
    assert found["baseline_fraud_share"] == 0.04
    assert found["shifted"] is shifted
    assert (found["p_value"] < PARAMS.label_shift_p) is shifted
    pending = {"status": "pending", "labels_mature_on": "2018-07-01"}
    assert label_shift(pending, baseline, PARAMS) is None


def test_a_label_shift_alone_leads_the_page():
    report = _two_week_report(shift=0.0, frauds_follow_amount=True)
    second = report["weeks"]["week_2"]
    second["labels"] = {"fraud_share": 0.08, "baseline_fraud_share": 0.02, "p_value": 1e-12,
                        "shifted": True}  # fmt: skip
    second["diagnosis"]["labels_shifted"] = True
    report["label_shift_weeks"] = ["week_2"]
    page = render_html(report, reference_shares=_reference_shares(report), model_md5="0" * 32)
    assert '<h2 id="verdict">Label shift in week_2: the share of frauds moved</h2>' in page
    assert "from 2.00% to 8.00% in week_2" in page
    assert "frauds 8.00% (label shift)" in page


def test_the_summary_holds_the_few_figures_a_reviewer_compares():
    report = _two_week_report(shift=1.5, frauds_follow_amount=True)
    summary = monitoring_summary(report)
    assert len(summary) <= 12  # what `dvc metrics diff` and `dvc exp show` show of monitoring
    assert summary["alert"] is True
    assert summary["worst_level"] == "act"
    week_2 = report["weeks"]["week_2"]["drift"]
    assert summary["worst_psi"] == max(found["psi"] for found in week_2.values())
    assert summary["drifted_features"] == len(report["drifted_features"]) == 2  # amount, score
    assert (summary["weeks"], summary["matured_weeks"]) == (2, 2)
    latest = report["weeks"]["week_2"]["performance"]["average_precision"]
    assert summary["latest_matured_average_precision"] == latest
    assert summary["baseline_average_precision"] == 1.0


def test_weeks_whose_labels_are_all_pending_are_never_called_nothing_to_do():
    # data end 2018-06-09: week 1 (06-01..06-07) matures on 06-14, so no week has labels
    report = _two_week_report(shift=0.0, frauds_follow_amount=True, end="2018-06-09", weeks=1)
    found = verdict(report)
    assert found["kind"] == "stable"
    assert found["pending_weeks"] == ["week_1"]
    assert "Nothing to do" not in found["advice"]
    assert "performance is unknown until then" in found["advice"]
    assert monitoring_summary(report)["latest_matured_average_precision"] is None
    page = render_html(report, reference_shares=[0.1] * 10 + [0.0], model_md5="0" * 32)
    assert "performance unknown until labels mature" in page
    assert "leaves out cards already known to be compromised" in page  # the baseline, said


def test_the_score_figure_draws_the_share_above_the_reference_apart_and_only_when_used():
    report = _two_week_report(shift=0.0, frauds_follow_amount=True)
    shares = [0.1] * 10 + [0.0]
    ticks = [t.get_text() for t in score_figure(report, shares).axes[0].get_xticklabels()]
    assert ticks == [str(i) for i in range(1, 11)]  # no phantom 11th bin at 0
    for entry in report["weeks"].values():
        entry["score_shares"][-1] = 0.05  # scores above the reference's highest
    axes = score_figure(report, shares).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()][-1] == "above\nmax"
    # each week's line runs over the ten deciles only; its share above is a lone marker
    assert {len(line.get_xdata()) for line in axes.get_lines()} == {10, 1}


def test_the_heatmap_of_one_week_is_wide_enough_for_its_labels():
    report = _two_week_report(shift=0.0, frauds_follow_amount=True, weeks=1)
    figure = drift_heatmap(report)
    longest = max(map(len, report["weeks"]["week_1"]["drift"]))
    # 0.06 in a 7-pt character, 0.9 in for the week's column, and never under the title's width
    assert figure.get_size_inches()[0] >= max(5.5, 0.06 * longest + 0.9)


def test_the_terminal_status_names_the_verdict_and_one_line_a_week():
    report = _two_week_report(shift=1.5, frauds_follow_amount=True)
    text = status_text(report)
    lines = text.splitlines()
    assert lines[0].startswith("data drift: ")
    assert "moved past act (0.25): amount, score" in text
    rows = [line for line in lines if line.startswith("week_")]
    assert len(rows) == 2
    assert rows[1].split()[3] == "amount"  # the worst-moved input of week 2


def test_the_strict_monitor_command_exits_1_on_an_alert_and_0_on_a_calm_report(tmp_path):
    alerting = tmp_path / "alert.json"
    alerting.write_text(json.dumps(_two_week_report(shift=1.5, frauds_follow_amount=True)))
    calm = tmp_path / "calm.json"
    calm.write_text(json.dumps(_two_week_report(shift=0.0, frauds_follow_amount=True)))
    with pytest.raises(SystemExit) as stopped:
        main(["monitor", "--report", str(alerting), "--strict"])
    assert stopped.value.code == 1
    main(["monitor", "--report", str(alerting)])  # without --strict it only reports
    main(["monitor", "--report", str(calm), "--strict"])
