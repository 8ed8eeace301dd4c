"""Balanced bagging on the validation folds, against the configured model: does it help?

Each bag is every fraud of a fold's training period plus legitimate transactions drawn at random
(with replacement) to make the frauds ``--ratios`` of the legitimate ones, the handbook's
``BalancedBaggingClassifier`` with a ``RandomUnderSampler``; the ensemble's score is its trees'
mean probability. Selection-only: validation folds, never the test period.

    python bench/balanced_bagging.py                       # depths 5/10/20, ratios 0.02/0.05/0.1
    python bench/balanced_bagging.py --depths 10 --ratios 0.05 --bags 200

Runs in this repository after `dvc repro` (reads data/split/folds.parquet and params.yaml).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import SCORE, validation_metrics
from fraudlab.modeling.pipeline import prequential_scores
from fraudlab.modeling.split import FOLD_COLUMN, ROLE_COLUMN

ROOT = Path(__file__).resolve().parents[1]


def bag_rows(y: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bag: every fraud, and ``frauds / ratio`` legitimate rows drawn with
    replacement."""
    frauds, legit = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    drawn = rng.choice(legit, size=min(len(legit), int(len(frauds) / ratio)), replace=True)
    return np.concatenate([frauds, drawn])


def balanced_bagging_scores(
    train: pd.DataFrame, valid: pd.DataFrame, features: list[str], *, depth: int, ratio: float,
    bags: int, seed: int,
) -> np.ndarray:  # fmt: skip
    """The mean fraud probability of ``bags`` trees, each fitted on one balanced bag."""
    x, y = train[features].to_numpy(), train[schema.TX_FRAUD].to_numpy()
    rng = np.random.default_rng(seed)
    total = np.zeros(len(valid))
    for bag in range(bags):
        rows = bag_rows(y, ratio, rng)
        tree = DecisionTreeClassifier(max_depth=depth, random_state=seed + bag)
        tree.fit(x[rows], y[rows])
        total += tree.predict_proba(valid[features].to_numpy())[:, 1]
    return total / bags


def _scored(folds: pd.DataFrame, features: list[str], **options: float) -> pd.DataFrame:
    scored = []
    for fold, rows in folds.groupby(FOLD_COLUMN, sort=True):
        train, valid = rows[rows[ROLE_COLUMN] == "train"], rows[rows[ROLE_COLUMN] == "valid"]
        scores = balanced_bagging_scores(train, valid, features, **options)
        scored.append(valid.assign(**{SCORE: scores, FOLD_COLUMN: fold}))
    return pd.concat(scored, ignore_index=True)


def _line(name: str, metrics: dict, k: int, seconds: float) -> str:
    ap, auc = metrics["average_precision"], metrics["auc_roc"]
    cp = metrics[f"card_precision_at_{k}"]
    return (f"| {name} | {ap['mean']:.3f} ± {ap['std']:.3f} | {auc['mean']:.3f} | "
            f"{cp['mean']:.3f} | {seconds:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--bags", type=int, default=100)
    args = parser.parse_args()
    loaded = load_params(ROOT / "params.yaml", "train", "features", "evaluate")
    train, k = loaded["train"], loaded["evaluate"].top_k
    features = feature_names(loaded["features"])
    folds = pd.read_parquet(ROOT / "data/split/folds.parquet")
    print(f"| model | val AP (± std) | val AUC | val CP@{k} | seconds |")
    print("|---|---|---|---|---|")
    started = time.perf_counter()
    configured = validation_metrics(
        prequential_scores(folds, features, params=train), FOLD_COLUMN, k
    )
    print(_line(f"configured {train.model} (params.yaml)", configured, k,
                time.perf_counter() - started))  # fmt: skip
    with threadpool_limits(limits=train.n_jobs):
        for depth, ratio in itertools.product(args.depths, args.ratios):
            started = time.perf_counter()
            scored = _scored(folds, features, depth=depth, ratio=ratio, bags=args.bags,
                             seed=train.seed)  # fmt: skip
            metrics = validation_metrics(scored, FOLD_COLUMN, k)
            name = f"balanced bagging, {args.bags} trees of depth {depth}, frauds:legit {ratio}"
            print(_line(name, metrics, k, time.perf_counter() - started))


if __name__ == "__main__":
    main()
