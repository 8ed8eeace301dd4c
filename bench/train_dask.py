"""XGBoost boosted in one process against boosted through xgboost.dask (``train.dask_workers``),
on the same rows: the workspace's split (run ``dvc repro`` first) and params.yaml's train params.

For each way of training it fits the validation folds and the training period as the train
stage does, scores the folds' validation days and the test period, and prints the validation
means and test values of AUC ROC, AP and CP@k, the mean and largest difference of a test score
from the one-process ``hist`` model's, and the wall time. The Dask runs use a local cluster of
as many one-thread worker processes as ``dask_workers``.

    python bench/train_dask.py                   # exact and hist in process, hist on 1, 2 workers
    python bench/train_dask.py --workers 2 4
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlab.core.params import TrainParams, load_params
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import SCORE, card_precision_key, ranking_metrics, validation_metrics
from fraudlab.modeling.pipeline import fit_pipeline, prequential_scores, score_frame
from fraudlab.modeling.split import FOLD_COLUMN
from fraudlab.scaleout.engine import EngineConfig
from fraudlab.scaleout.training import training_client

ROOT = Path(__file__).resolve().parents[1]


def run(
    params: TrainParams, data: dict[str, pd.DataFrame], features: list[str], k: int
) -> tuple[dict, np.ndarray, float]:
    started = time.perf_counter()
    with training_client(params.dask_workers, EngineConfig(kind="local")) as client:
        validation = prequential_scores(data["folds"], features, params=params, client=client)
        pipeline = fit_pipeline(data["train"], features, params=params, client=client)
    seconds = time.perf_counter() - started
    test = score_frame(pipeline, data["test"], features=features)
    means = validation_metrics(validation, FOLD_COLUMN, k)
    figures = {
        "validation": {metric: values["mean"] for metric, values in means.items()},
        "test": ranking_metrics(test, k),
    }
    return figures, test[SCORE].to_numpy(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    loaded = load_params(args.params, "train", "features", "evaluate")
    base: TrainParams = loaded["train"]
    features = feature_names(loaded["features"])
    k = loaded["evaluate"].top_k
    split = ROOT / "data" / "split"
    data = {name: pd.read_parquet(split / f"{name}.parquet") for name in ("train", "folds", "test")}
    print(
        f"{len(data['train']):,} training rows, {len(data['folds']):,} fold rows, "
        f"{len(data['test']):,} test rows; {base.xgboost.n_estimators} trees of depth "
        f"{base.xgboost.max_depth}"
    )

    def variant(tree_method: str, dask_workers: int) -> TrainParams:
        raw = base.model_dump()
        raw["xgboost"]["tree_method"] = tree_method
        return TrainParams.model_validate(raw | {"model": "xgboost", "dask_workers": dask_workers})

    runs = [("in process", "exact", 0), ("in process", "hist", 0)]
    runs += [(f"Dask, {n} worker{'s' * (n > 1)}", "hist", n) for n in args.workers]
    cp = card_precision_key(k)
    print(
        f"{'training':<16} {'trees':<6} {'val AUC':>8} {'val AP':>8} {'val CP':>8} "
        f"{'test AUC':>8} {'test AP':>8} {'test CP':>8} {'|Δscore| mean/max':>17} {'seconds':>8}"
    )
    reference = None
    for name, tree_method, workers in runs:
        figures, scores, seconds = run(variant(tree_method, workers), data, features, k)
        if tree_method == "hist" and workers == 0:
            reference = scores
        gaps = None if reference is None else np.abs(scores - reference)
        gap = "" if gaps is None else f"{gaps.mean():.1e} / {gaps.max():.1e}"
        v, t = figures["validation"], figures["test"]
        print(
            f"{name:<16} {tree_method:<6} {v['auc_roc']:>8.4f} {v['average_precision']:>8.4f} "
            f"{v[cp]:>8.4f} {t['auc_roc']:>8.4f} {t['average_precision']:>8.4f} "
            f"{t[cp]:>8.4f} {gap:>17} {seconds:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
