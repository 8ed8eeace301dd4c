"""The model: one scikit-learn Pipeline (scaling + estimator) built from params, fitted, and
scored; prequential validation fits one per fold. The saved form is ``fraudlab.modeling.artifact``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import SplineTransformer, StandardScaler
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.params import TrainParams
from fraudlab.modeling.metrics import SCORE
from fraudlab.modeling.split import FOLD_COLUMN, ROLE_COLUMN

log = logging.getLogger(__name__)

# Columns kept beside each score: enough to compute every metric, no features.
PREDICTION_COLUMNS = [
    schema.TRANSACTION_ID,
    schema.TX_DATETIME,
    schema.CUSTOMER_ID,
    schema.TX_AMOUNT,
    schema.TX_FRAUD,
]


def _estimator(params: TrainParams, *, scale_pos_weight: float) -> ClassifierMixin:
    # Each family's params section is named after its estimator's arguments, so it passes whole.
    class_weight = "balanced" if params.imbalance == "class_weight" else None
    if params.model == "logistic_regression":
        p = params.logistic_regression.model_dump(exclude={"spline_knots"})
        return LogisticRegression(**p, class_weight=class_weight, random_state=params.seed)
    if params.model == "random_forest":
        p = params.random_forest.model_dump()
        if not p["bootstrap"]:
            p["max_samples"] = None  # only meaningful with bootstrap samples
        return RandomForestClassifier(
            **p, class_weight=class_weight, n_jobs=params.n_jobs, random_state=params.seed
        )
    return XGBClassifier(
        **params.xgboost.model_dump(),
        scale_pos_weight=scale_pos_weight,
        n_jobs=params.n_jobs,
        random_state=params.seed,
    )


def build_pipeline(params: TrainParams, *, scale_pos_weight: float = 1.0) -> Pipeline:
    """An unfitted Pipeline for the configured model family."""
    steps = []
    if params.model == "logistic_regression" and params.logistic_regression.spline_knots:
        steps.append(("spline", SplineTransformer(n_knots=params.logistic_regression.spline_knots)))
    steps += [
        ("scale", StandardScaler()),
        ("model", _estimator(params, scale_pos_weight=scale_pos_weight)),
    ]
    return Pipeline(steps)


class TrainingDataError(UserError):
    """The rows to fit on cannot train a classifier."""


def fit_pipeline(
    train: pd.DataFrame, features: list[str], *, params: TrainParams, client: Any = None
) -> Pipeline:
    """Fit a new Pipeline on ``train`` (thread count pinned: BLAS sums depend on it); with
    ``train.dask_workers``, XGBoost boosts on the Dask cluster of ``client``."""
    y = train[schema.TX_FRAUD].to_numpy()
    classes = np.unique(y)
    if len(classes) < 2:
        # xgboost would fit a constant model (AUC 0.5) and logistic regression raise: the same
        # clear error for every family. The split stage checks this first; this guards direct use.
        raise TrainingDataError(
            f"cannot fit {params.model}: the {len(y)} training rows hold one class only "
            f"({classes.tolist()}); the training period needs frauds and legitimate transactions"
        )
    scale_pos_weight = 1.0
    if params.imbalance == "scale_pos_weight":
        scale_pos_weight = float((y == 0).sum() / max((y == 1).sum(), 1))
    pipeline = build_pipeline(params, scale_pos_weight=scale_pos_weight)
    with threadpool_limits(limits=params.n_jobs):
        if params.dask_workers:
            _fit_on_cluster(pipeline, train[features], y, client=client, params=params)
        else:
            pipeline.fit(train[features], y)
    model = pipeline.named_steps["model"]
    if isinstance(model, RandomForestClassifier):
        # A forest predicting on several threads adds its trees' probabilities in whatever order
        # the threads finish: scores then differ in the last bit from run to run. Predict on one.
        model.set_params(n_jobs=1)
    return pipeline


def _fit_on_cluster(
    pipeline: Pipeline, inputs: pd.DataFrame, y: np.ndarray, *, client: Any, params: TrainParams
) -> None:
    """The preprocessing steps fitted here, the model's boosting on the cluster."""
    # Imported here: only training on workers needs it, so the stages that merely load and score
    # a model (evaluate, monitor) do not depend on the Dask engine's code.
    from fraudlab.scaleout.training import fit_on_workers

    if client is None:
        raise ValueError(f"train.dask_workers is {params.dask_workers}: pass a Dask client")
    prepared = np.asarray(pipeline[:-1].fit_transform(inputs), dtype=np.float64)
    model = fit_on_workers(client, pipeline.steps[-1][1], prepared, y, workers=params.dask_workers)
    pipeline.steps[-1] = ("model", model)


def predict_scores(pipeline: Pipeline, frame: pd.DataFrame, *, features: list[str]) -> np.ndarray:
    """Fraud probabilities as float64 (xgboost returns float32, which JSON writers reject)."""
    n_jobs = getattr(pipeline.named_steps["model"], "n_jobs", None) or 1
    with threadpool_limits(limits=n_jobs):
        return pipeline.predict_proba(frame[features])[:, 1].astype(np.float64)


def score_frame(pipeline: Pipeline, frame: pd.DataFrame, *, features: list[str]) -> pd.DataFrame:
    """The prediction columns of ``frame`` with the model's score."""
    return frame[PREDICTION_COLUMNS].assign(
        **{SCORE: predict_scores(pipeline, frame, features=features)}
    )


def prequential_scores(
    folds: pd.DataFrame, features: list[str], *, params: TrainParams, client: Any = None
) -> pd.DataFrame:
    """Score each fold's validation rows with a model fitted on that fold's training rows."""
    scored = []
    n_folds = folds[FOLD_COLUMN].nunique()
    for fold, rows in folds.groupby(FOLD_COLUMN, sort=True):
        started = time.perf_counter()
        train = rows[rows[ROLE_COLUMN] == "train"]
        valid = rows[rows[ROLE_COLUMN] == "valid"]
        pipeline = fit_pipeline(train, features, params=params, client=client)
        scored.append(score_frame(pipeline, valid, features=features).assign(**{FOLD_COLUMN: fold}))
        log.info(
            "fold %d/%d: fitted on %d rows, scored %d in %.1f s",
            fold + 1,
            n_folds,
            len(train),
            len(valid),
            time.perf_counter() - started,
        )
    return pd.concat(scored, ignore_index=True)


def feature_importance(pipeline: Pipeline, features: list[str]) -> pd.Series:
    """Tree importances, or absolute coefficients on standardized inputs (summed over each
    feature's spline basis), normalized to sum 1."""
    model = pipeline.named_steps["model"]
    if hasattr(model, "feature_importances_"):
        values = np.asarray(model.feature_importances_, dtype=np.float64)
    else:
        # SplineTransformer emits each feature's basis columns together, feature by feature.
        per_feature = np.abs(np.ravel(model.coef_)).astype(np.float64).reshape(len(features), -1)
        values = per_feature.sum(axis=1)
    total = values.sum()
    return pd.Series(values / total if total else values, index=features).sort_values(
        ascending=False, kind="stable"
    )
