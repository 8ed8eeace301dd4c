"""Injected drift is detected, naming what moved and nothing else: the tiny configuration's
world, a model trained on it before the change, and the monitoring report of the weeks after its
test period once the simulator changes the world from the first of them (day 60).

The pipeline's own functions run in process (simulate, features, split, fit, profile, report),
as the stages chain them: `dvc repro` itself on injected drift is the end-to-end tests' (amount
inflation with monitor.strict). This keeps the per-scenario cost to seconds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.data.simulate import simulate_transactions
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.integrity.reproducibility import merge
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.modeling.split import monitoring_start, train_test_split
from fraudlab.monitoring.drift import reference_profile
from fraudlab.monitoring.weekly import (
    baseline_performance,
    data_end,
    monitored_weeks,
    monitoring_report,
)
from test_params import ROOT

TINY = yaml.safe_load((Path(__file__).parent / "tiny_params.yaml").read_text())
SECTIONS = ("simulate", "features", "split", "train", "evaluate", "monitor")


def _params(tmp: Path, overrides: dict) -> dict:
    raw = merge(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY), overrides)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path, *SECTIONS)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """The model and reference profile the stationary tiny world gives."""
    params = _params(tmp_path_factory.mktemp("stationary"), {})
    features = params["features"]
    frame = build_features(simulate_transactions(params["simulate"]), features)
    split = params["split"]
    train, _ = train_test_split(
        frame,
        train_start=split.train_start,
        train_days=split.train_days,
        delay_days=features.label_delay_days,
        test_days=split.test_days,
    )
    names = feature_names(features)
    pipeline = fit_pipeline(train, names, params=params["train"])
    reference = reference_profile(
        {n: train[n].to_numpy(dtype=np.float64) for n in names},
        scores=predict_scores(pipeline, train, features=names),
    )
    return {"pipeline": pipeline, "reference": reference, "names": names}


def _report(deployed: dict, tmp: Path, drift: dict) -> dict:
    params = _params(tmp, {"simulate": {"drift": drift}})
    features, split = params["features"], params["split"]
    frame = build_features(simulate_transactions(params["simulate"]), features)
    start = monitoring_start(split, delay_days=features.label_delay_days)
    assert start == dt.date(2018, 5, 31)  # day 60
    end = data_end(frame[schema.TX_DATETIME])
    times = frame[schema.TX_DATETIME]
    test = frame[(times >= pd.Timestamp(start) - pd.Timedelta(days=split.test_days))
                 & (times < pd.Timestamp(start))]  # fmt: skip
    later = frame[times >= pd.Timestamp(start)].reset_index(drop=True)
    scores = predict_scores(deployed["pipeline"], later, features=deployed["names"])
    k = params["evaluate"].top_k
    baseline = baseline_performance(
        test, predict_scores(deployed["pipeline"], test, features=deployed["names"]), k=k
    )
    return monitoring_report(
        later,
        scores,
        weeks=monitored_weeks(start=start, end=end),
        end=end,
        reference=deployed["reference"],
        params=params["monitor"],
        delay_days=features.label_delay_days,
        k=k,
        baseline=baseline,
    )


def test_the_stationary_world_raises_no_alert_in_any_week(deployed, tmp_path):
    report = _report(deployed, tmp_path, {"scenario": "none", "start_day": 60, "strength": 0.5})
    assert not report["alert"]
    assert [e["diagnosis"]["kind"] for e in report["weeks"].values()] == ["stable", "stable"]


@pytest.mark.parametrize(
    ("scenario", "strength", "week", "kind", "moved"),
    [
        # the amount rule of fraud scenario 1 goes stale: the model decays with the drift; the
        # amounts over the card's earlier mean (and the long windows' max) jump with them
        ("amount_inflation", 1.0, "week_1", "data drift and model decay",
         {"tx_amount", "customer_id_avg_amount_1day_window", "customer_id_avg_amount_7day_window",
          "customer_id_avg_amount_30day_window", "customer_id_amount_over_mean_7day_window",
          "customer_id_amount_over_mean_30day_window", "customer_id_amount_over_mean_90day_window",
          "customer_id_amount_over_max_30day_window", "customer_id_amount_over_max_90day_window",
          "score"}),
        # customers pay at night: only the night flag moves, from the first week; AP holds
        ("night_shift", 0.5, "week_1", "data drift", {"tx_during_night"}),
        # half the terminals go dark: the others' payment counts double. Terminal windows end a
        # label delay before each payment (the handbook's definition), so it shows a week later
        ("terminals_dark", 0.5, "week_2", "data drift", {"terminal_id_nb_tx_1day_window",
                                                         "terminal_id_nb_tx_7day_window"}),
    ],
)  # fmt: skip
def test_injected_drift_names_what_moved_and_nothing_else(
    deployed, tmp_path, scenario, strength, week, kind, moved
):
    report = _report(deployed, tmp_path, {"scenario": scenario, "start_day": 60,
                                           "strength": strength})  # fmt: skip
    assert report["alert"]
    assert set(report["drifted_features"]) == moved
    first = next(label for label, e in report["weeks"].items() if e["diagnosis"]["inputs_moved"])
    assert first == week
    assert report["weeks"][week]["diagnosis"]["kind"] == kind
    # every week names only columns of the change (the 30-day means follow a week later)
    for entry in report["weeks"].values():
        assert set(entry["diagnosis"]["inputs_moved"]) <= moved


def test_a_terminal_surge_shows_in_the_labels_not_in_the_inputs(deployed, tmp_path):
    """Six more terminals compromised a day (the tiny world has one): no input moves, as the only
    inputs that see compromised terminals (their fraud rates) learn of the frauds a label delay
    later; the matured week's share of frauds and its AP do, in week 1."""
    report = _report(deployed, tmp_path, {"scenario": "terminal_surge", "start_day": 60,
                                           "strength": 6.0})  # fmt: skip
    assert not report["alert"]
    first = report["weeks"]["week_1"]
    assert first["diagnosis"]["inputs_moved"] == []
    assert report["label_shift_weeks"] == ["week_1"]
    assert first["labels"]["fraud_share"] > 1.5 * first["labels"]["baseline_fraud_share"]
    assert first["diagnosis"]["kind"] == "model decay"
    # the stationary world's share of frauds stays where it was
    calm = _report(deployed, tmp_path, {"scenario": "none", "start_day": 60, "strength": 0.5})
    assert calm["label_shift_weeks"] == []
    assert calm["weeks"]["week_1"]["labels"]["p_value"] > 0.5
