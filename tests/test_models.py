"""The model artifact: factory, determinism, behaviour of trained models, version check."""

from __future__ import annotations

import dataclasses
import io
import pickle

import joblib
import numpy as np
import pytest
import yaml

from fraudlab.core.params import TrainParams
from fraudlab.features.batch import build_features
from fraudlab.features.names import KNOWN_LABEL_FEATURES, feature_names
from fraudlab.modeling.artifact import (
    ModelArtifact,
    ModelVersionError,
    check_artifact,
    model_artifact,
)
from fraudlab.modeling.pipeline import feature_importance, fit_pipeline, predict_scores
from helpers import features_with
from test_params import ROOT

FAMILIES = ["logistic_regression", "random_forest", "xgboost"]


def _train_params(model: str, **overrides) -> TrainParams:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    raw["random_forest"]["n_estimators"] = 20
    raw["xgboost"]["n_estimators"] = 20
    return TrainParams.model_validate(raw | {"model": model} | overrides)


FP = features_with(
    customer_windows_days=[1, 7, 30],
    terminal_windows_days=[1, 7, 30],
    label_delay_days=7,
    night_end_hour=6,
)


@pytest.fixture(scope="module")
def featured(small_transactions):
    return build_features(small_transactions, FP), feature_names(FP)


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_fitting_twice_gives_byte_identical_artifacts(featured, family):
    frame, names = featured
    frame = frame.iloc[::4]  # determinism needs no more rows
    params = _train_params(family)
    first = model_artifact(fit_pipeline(frame, names, params=params), params=params, features=FP)
    second = model_artifact(fit_pipeline(frame, names, params=params), params=params, features=FP)
    assert _bytes(first) == _bytes(second)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_ignore_ids_and_follow_obvious_signals(featured, family):
    frame, names = featured
    pipeline = fit_pipeline(frame, names, params=_train_params(family))
    scores = predict_scores(pipeline, frame, features=names)
    assert scores.dtype == np.float64
    assert ((scores >= 0) & (scores <= 1)).all()

    relabelled = frame.assign(
        customer_id=frame["customer_id"] + 10_000,
        terminal_id=frame["terminal_id"][::-1].to_numpy(),
        transaction_id=frame["transaction_id"] * 3,
    )
    np.testing.assert_array_equal(predict_scores(pipeline, relabelled, features=names), scores)

    legit = frame[frame["tx_fraud"] == 0]
    risky = legit.assign(**{c: 1.0 for c in names if c.startswith("terminal_id_risk")})
    assert (
        predict_scores(pipeline, risky, features=names).mean()
        > predict_scores(pipeline, legit, features=names).mean()
    )
    big = legit.assign(tx_amount=legit["tx_amount"] + 300)
    assert (
        predict_scores(pipeline, big, features=names).mean()
        > predict_scores(pipeline, legit, features=names).mean()
    )


def test_scale_pos_weight_is_the_negative_to_positive_ratio(featured):
    frame, names = featured
    pipeline = fit_pipeline(
        frame, names, params=_train_params("xgboost", imbalance="scale_pos_weight")
    )
    labels = frame["tx_fraud"]
    expected = (labels == 0).sum() / (labels == 1).sum()
    assert pipeline.named_steps["model"].get_params()["scale_pos_weight"] == pytest.approx(expected)


def test_class_weight_reaches_the_estimator(featured):
    frame, names = featured
    pipeline = fit_pipeline(
        frame, names, params=_train_params("random_forest", imbalance="class_weight")
    )
    assert pipeline.named_steps["model"].class_weight == "balanced"


@pytest.mark.parametrize(
    ("family", "spline_knots"),
    [("xgboost", 0), ("random_forest", 0), ("logistic_regression", 0), ("logistic_regression", 5)],
)
def test_feature_importance_names_every_feature_and_sums_to_one(featured, family, spline_knots):
    frame, names = featured
    params = _train_params(family)
    params = params.model_copy(
        update={
            "logistic_regression": params.logistic_regression.model_copy(
                update={"spline_knots": spline_knots}
            )
        }
    )
    pipeline = fit_pipeline(frame, names, params=params)
    assert ("spline" in pipeline.named_steps) == (
        family == "logistic_regression" and spline_knots > 0
    )
    importance = feature_importance(pipeline, names)
    assert sorted(importance.index) == sorted(names)
    assert importance.sum() == pytest.approx(1.0)
    # the first carries one of the simulator's fraud scenarios: large amounts, compromised
    # terminals (their risk, their known frauds) or compromised cards (amounts off their history)
    scenarios = ("tx_amount", "terminal_id_risk", "customer_id_amount_over", *KNOWN_LABEL_FEATURES)
    assert importance.index[0].startswith(scenarios), importance.index[:3].tolist()


def test_a_model_from_other_library_versions_is_refused(featured):
    frame, names = featured
    params = _train_params("logistic_regression")
    artifact = model_artifact(fit_pipeline(frame, names, params=params), params=params, features=FP)
    assert check_artifact(artifact) is artifact
    older = dataclasses.replace(artifact, versions=artifact.versions | {"sklearn": "0.0.1"})
    with pytest.raises(ModelVersionError, match="sklearn"):
        check_artifact(older)


def test_the_artifact_carries_what_scoring_needs_without_params_yaml(featured):
    frame, names = featured
    params = _train_params("xgboost")
    artifact = pickle.loads(
        pickle.dumps(
            model_artifact(fit_pipeline(frame, names, params=params), params=params, features=FP)
        )
    )
    assert isinstance(artifact, ModelArtifact)
    assert artifact.features == tuple(names)
    assert artifact.family == "xgboost"
    assert artifact.features_config == FP
    assert artifact.train_params["xgboost"]["max_depth"] == params.xgboost.max_depth
    assert predict_scores(
        artifact.pipeline, frame.head(5), features=list(artifact.features)
    ).shape == (5,)


def test_an_old_dict_bundle_is_refused_with_what_to_do():
    with pytest.raises(ModelVersionError, match=r"a dict, not a ModelArtifact\): rerun the train"):
        check_artifact({"pipeline": None, "features": []})
