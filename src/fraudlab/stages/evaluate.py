"""Stage ``evaluate``: score the test period, write metrics and plots through dvclive."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from dvclive import Live

from fraudlab.core import schema
from fraudlab.core.io import atomic_path, read_parquet, write_json, write_parquet
from fraudlab.core.params import EvaluateParams, load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.integrity.lock import file_md5
from fraudlab.modeling import plots
from fraudlab.modeling.artifact import load_model
from fraudlab.modeling.metrics import SCORE, evaluation_metrics
from fraudlab.modeling.pipeline import feature_importance, score_frame
from fraudlab.modeling.split import FOLD_COLUMN

log = logging.getLogger(__name__)
SECTIONS = ("evaluate",)


def _flatten(metrics: dict, prefix: str = "") -> dict[str, float | int]:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}/") if isinstance(value, dict) else {name: value})
    return flat


def _log_to_live(
    live: Live,
    *,
    metrics: dict,
    test: pd.DataFrame,
    importance: pd.Series,
    params: EvaluateParams,
) -> None:
    for name, value in _flatten(metrics).items():
        live.log_metric(name, value, plot=False)
    y_true, y_score = test[schema.TX_FRAUD].to_numpy(), test[SCORE].to_numpy()
    live.log_sklearn_plot("roc", y_true, y_score, name="roc.json", drop_intermediate=True)
    live.log_sklearn_plot(
        "precision_recall", y_true, y_score, name="precision_recall.json", drop_intermediate=True
    )
    live.log_plot(
        "feature_importance",
        importance.rename_axis("feature").reset_index(name="importance"),
        x="importance",
        y="feature",
        template="bar_horizontal_sorted",
        title="Feature importance",
    )
    histogram = plots.score_histogram(y_true, y_score, bins=params.score_bins)
    live.log_plot(
        "score_distribution",
        histogram,
        x="score",
        y=["legit", "fraud"],
        template="linear",
        title="Score distribution (share of class)",
    )

    images = Path(live.plots_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    test_metrics = metrics["test"]
    figures = {
        "roc.png": plots.roc_figure(y_true, y_score, auc=test_metrics["auc_roc"]),
        "precision_recall.png": plots.precision_recall_figure(
            y_true, y_score, ap=test_metrics["average_precision"]
        ),
        "confusion_matrix.png": plots.confusion_matrix_figure(
            test_metrics["at_threshold"], test_metrics["at_threshold"]["threshold"]
        ),
        "feature_importance.png": plots.feature_importance_figure(importance),
        "score_distribution.png": plots.score_distribution_figure(histogram),
    }
    for name, figure in figures.items():
        plots.save_png(figure, images / name)


def serving_config(metrics: dict, *, model_md5: str, params: EvaluateParams) -> dict:
    """The operating threshold chosen on validation, tied to the exact model it was chosen for
    (its MD5, as dvc.lock records it): a service refuses a threshold of another model."""
    return {
        "model_md5": model_md5,
        "threshold": metrics["test"]["at_threshold"]["threshold"],
        "threshold_rule": params.threshold,
    }


def evaluate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("model", help="fitted model artifact (joblib)")
    parser.add_argument("--test", required=True, help="test rows with features (Parquet)")
    parser.add_argument("--validation-scores", required=True, help="fold scores (Parquet)")
    parser.add_argument("--test-scores", required=True, help="test scores (Parquet)")
    parser.add_argument("--live-dir", required=True, help="dvclive directory: metrics and plots")
    parser.add_argument(
        "--serving", required=True, help="what a scoring service needs beside the model (JSON)"
    )
    parser.add_argument(
        "--lock", default="dvc.lock", help="hashes the model must match (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    params: EvaluateParams = load_params(args.params, *SECTIONS)["evaluate"]
    model = load_model(args.model, lock_path=args.lock)
    features = list(model.features)
    test = score_frame(model.pipeline, read_parquet(args.test), features=features)
    metrics = evaluation_metrics(
        test,
        read_parquet(args.validation_scores),
        fold_column=FOLD_COLUMN,
        params=params,
    )
    importance = feature_importance(model.pipeline, features)
    with (
        atomic_path(args.live_dir, directory=True) as tmp,
        Live(str(tmp), dvcyaml=False, save_dvc_exp=False) as live,
    ):
        _log_to_live(live, metrics=metrics, test=test, importance=importance, params=params)
    write_parquet(test, args.test_scores)
    write_json(serving_config(metrics, model_md5=file_md5(args.model), params=params), args.serving)
    log.info(
        "threshold %.4f (by %s on validation); test: %s",
        metrics["test"]["at_threshold"]["threshold"],
        params.threshold,
        {k: round(v, 4) for k, v in _flatten(metrics["test"]).items()},
    )


if __name__ == "__main__":
    run(evaluate)
