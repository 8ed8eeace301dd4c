"""Stage ``train``: fit the configured model on each validation fold (scoring the fold's
validation period), then on the training period; save the final Pipeline, and the reference
profile of its inputs and scores on the training rows (what monitoring compares with).

With ``train.dask_workers`` (XGBoost only), the boosting runs through xgboost.dask
(``fraudlab.scaleout.training``) on the Dask engine's scheduler, or on a local cluster started for
the stage when there is none."""

from __future__ import annotations

import logging
import time

from fraudlab.core.io import read_parquet, write_joblib, write_json, write_parquet
from fraudlab.core.params import FeaturesParams, TrainParams, load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.features.names import feature_names
from fraudlab.modeling.artifact import model_artifact
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores, prequential_scores
from fraudlab.monitoring.drift import reference_profile
from fraudlab.scaleout.engine import engine_config
from fraudlab.scaleout.training import training_client

log = logging.getLogger(__name__)
SECTIONS = ("train", "features")


def train(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("train_rows", help="training rows with features (Parquet)")
    parser.add_argument("--folds", required=True, help="validation folds' rows (Parquet)")
    parser.add_argument("--model", required=True, help="fitted model artifact (joblib)")
    parser.add_argument("--validation-scores", required=True, help="fold scores (Parquet)")
    parser.add_argument(
        "--reference-profile", required=True, help="inputs' and scores' profile (JSON)"
    )
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    params: TrainParams = loaded["train"]
    features_params: FeaturesParams = loaded["features"]
    features = feature_names(features_params)

    with training_client(params.dask_workers, engine_config()) as client:
        scored = prequential_scores(
            read_parquet(args.folds), features, params=params, client=client
        )
        started = time.perf_counter()
        train_rows = read_parquet(args.train_rows)
        pipeline = fit_pipeline(train_rows, features, params=params, client=client)
    log.info(
        "final %s model: fitted on %d rows in %.1f s",
        params.model,
        len(train_rows),
        time.perf_counter() - started,
    )
    profile = reference_profile(
        {name: train_rows[name].to_numpy(dtype="float64") for name in features},
        scores=predict_scores(pipeline, train_rows, features=features),
    )
    write_parquet(scored, args.validation_scores)
    write_json(profile.to_dict(), args.reference_profile)
    write_joblib(model_artifact(pipeline, params=params, features=features_params), args.model)


if __name__ == "__main__":
    run(train)
