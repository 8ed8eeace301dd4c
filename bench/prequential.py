"""The prequential test protocol (stage ``prequential``) on other feature sets, for comparison
with the handbook's table after model selection: the configured model (params.yaml ``train``)
refit on each of ``split.test_folds`` training periods and scored on its own test period, for
the handbook's 15 features and for the configured features.

Computes the features from the validate stage's output (``data/clean``), so it needs
``dvc repro`` up to ``validate`` only.

    python bench/prequential.py              # ~3 minutes on 2 cores at the reference size
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fraudlab.core import schema
from fraudlab.core.io import read_parquet
from fraudlab.core.params import FeaturesParams, load_params
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import SCORE, card_precision_key, mean_and_std, ranking_metrics
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.modeling.split import frame_reader, prequential_test_parts

ROOT = Path(__file__).resolve().parents[1]


def protocol(clean, features: FeaturesParams, params: dict) -> list[tuple[str, dict]]:
    """Each test period and its ranking metrics, with ``features``."""
    frame = build_features(clean, features)
    names = feature_names(features)
    times = frame[schema.TX_DATETIME]
    parts = prequential_test_parts(
        frame_reader(frame), params["split"], delay_days=features.label_delay_days,
        span=(times.min(), times.max()),
    )  # fmt: skip
    found = []
    for _, test_period, train, test in parts:
        pipeline = fit_pipeline(train, names, params=params["train"])
        scored = test.assign(**{SCORE: predict_scores(pipeline, test, features=names)})
        found.append((test_period, ranking_metrics(scored, params["evaluate"].top_k)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--clean", default=str(ROOT / "data" / "clean" / "transactions.parquet"))
    args = parser.parse_args()
    params = load_params(args.params, "split", "features", "train", "evaluate")
    key = card_precision_key(params["evaluate"].top_k)
    clean = read_parquet(args.clean)
    sets = {
        "handbook's 15 features": params["features"].model_copy(update={"groups": []}),
        f"configured ({len(feature_names(params['features']))} features)": params["features"],
    }
    print(f"model: {params['train'].model}; AUC ROC / AP / CP@{params['evaluate'].top_k}")
    for label, features in sets.items():
        started = time.perf_counter()
        weeks = protocol(clean, features, params)
        print(f"\n{label} ({time.perf_counter() - started:.0f} s)")
        for period, metrics in weeks:
            print(f"  {period}  " + " / ".join(f"{metrics[k]:.4f}" for k in
                                              ("auc_roc", "average_precision", key)))  # fmt: skip
        summary = mean_and_std([metrics for _, metrics in weeks])
        print("  mean ± std              " + " / ".join(
            f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}"
            for k in ("auc_roc", "average_precision", key)
        ))  # fmt: skip


if __name__ == "__main__":
    main()
