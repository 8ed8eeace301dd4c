"""Which feature groups earn their place: prequential validation AP fold by fold.

Fits the configured model (params.yaml ``train``) on each prequential validation fold (cut as
the split stage cuts them) and prints its validation AP per fold for: the handbook's 15
features; the handbook set plus each group alone; a greedy forward selection (from the handbook
set, add the group that raises the mean validation AP most, while one raises it by
``--min-gain`` (0.001) or more and on most folds); the selection without each of its groups;
and every group.
Gains are fold by fold against the row named. Choices read the validation folds only; the test
AP and AUC (the model fitted on the training period) are printed for the record.

Computes every group's features from the validate stage's output (``data/clean``) and splits
them as the split stage does, so it needs ``dvc repro`` up to ``validate`` only, whatever
``features.groups`` selects.

    python bench/feature_groups.py                # ~4 minutes on 2 cores at the reference size
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams, SplitParams, TrainParams, load_params
from fraudlab.features.batch import build_features
from fraudlab.features.names import GROUPS, feature_names
from fraudlab.modeling.metrics import SCORE
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores, prequential_scores
from fraudlab.modeling.split import FOLD_COLUMN, prequential_folds, train_test_split

ROOT = Path(__file__).resolve().parents[1]


def evaluate(
    features: list[str], *, folds: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, params
) -> tuple[list[float], float, float]:
    """Validation AP per fold (the train stage's prequential scores); test AP and AUC of a model
    fitted on the training period."""
    scored = prequential_scores(folds, features, params=params)
    per_fold = [
        float(average_precision_score(rows[schema.TX_FRAUD], rows[SCORE]))
        for _, rows in scored.groupby(FOLD_COLUMN, sort=True)
    ]
    scores = predict_scores(fit_pipeline(train, features, params=params), test, features=features)
    labels = test[schema.TX_FRAUD]
    return per_fold, average_precision_score(labels, scores), roc_auc_score(labels, scores)


class Bench:
    """Each set of groups evaluated once, printed as it is."""

    def __init__(self, clean: pd.DataFrame, *, params: dict[str, Any]):
        self.params: FeaturesParams = params["features"]
        self.train_params: TrainParams = params["train"]
        split: SplitParams = params["split"]
        every = build_features(clean, self.params.model_copy(update={"groups": list(GROUPS)}))
        delay = self.params.label_delay_days
        self.train, self.test = train_test_split(
            every,
            train_start=split.train_start,
            train_days=split.train_days,
            delay_days=delay,
            test_days=split.test_days,
        )
        self.folds = prequential_folds(every, split, delay_days=delay)
        # per set of groups: validation AP per fold, test AP, test AUC
        self.results: dict[tuple[str, ...], tuple[list[float], float, float]] = {}

    def report(self, groups: tuple[str, ...], *, label: str, against: tuple[str, ...]) -> None:
        """Evaluate ``groups`` (once) and print a row, gains fold by fold against ``against``
        (itself when not evaluated yet)."""
        key = _key(groups)
        names = feature_names(self.params.model_copy(update={"groups": list(key)}))
        if key not in self.results:
            self.results[key] = evaluate(
                names, folds=self.folds, train=self.train, test=self.test, params=self.train_params
            )
        per_fold, test_ap, test_auc = self.results[key]
        gains = self.gains(groups, against=against if _key(against) in self.results else groups)
        print(
            f"{label:<55} {len(names):>2} features  val AP {np.mean(per_fold):.4f} "
            f"± {np.std(per_fold, ddof=1):.4f}  folds [{' '.join(f'{ap:.3f}' for ap in per_fold)}]"
            f"  gain [{' '.join(f'{g:+.3f}' for g in gains)}] mean {np.mean(gains):+.4f}  "
            f"test AP {test_ap:.4f} AUC {test_auc:.4f}",
            flush=True,
        )

    def gains(self, groups: tuple[str, ...], *, against: tuple[str, ...]) -> np.ndarray:
        """Validation AP fold by fold of ``groups`` minus that of ``against`` (both evaluated)."""
        return np.subtract(self.results[_key(groups)][0], self.results[_key(against)][0])


def _key(groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(group for group in GROUPS if group in groups)


def forward_selection(bench: Bench, *, min_gain: float) -> tuple[str, ...]:
    """Greedy: add the group that raises the mean validation AP most, while one raises it by
    ``min_gain`` or more and on most folds (a smaller gain is noise: the folds' AP spread is
    about 0.05)."""
    chosen: tuple[str, ...] = ()
    bench.report(chosen, label="handbook 15", against=chosen)
    while left := [group for group in GROUPS if group not in chosen]:
        for group in left:
            label = " + ".join(("handbook", *chosen, group))
            bench.report((*chosen, group), label=label, against=chosen)
        gains = {group: bench.gains((*chosen, group), against=chosen) for group in left}
        group = max(gains, key=lambda g: float(np.mean(gains[g])))
        if np.mean(gains[group]) < min_gain or np.sum(gains[group] > 0) * 2 <= len(gains[group]):
            break
        chosen = (*chosen, group)
        print(f"-> chosen: {', '.join(chosen)}", flush=True)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument(
        "--clean", type=Path, default=ROOT / "data" / "clean" / "transactions.parquet"
    )
    parser.add_argument(
        "--min-gain", type=float, default=0.001, help="mean validation AP a group must add"
    )
    args = parser.parse_args()
    params = load_params(args.params, "features", "split", "train")
    bench = Bench(pd.read_parquet(args.clean), params=params)
    print(
        f"model: {bench.train_params.model}; validation AP per fold, newest fold first; gains "
        "fold by fold against the row each one extends (or leaves a group out of)"
    )
    chosen = forward_selection(bench, min_gain=args.min_gain)
    print(f"selected: {list(chosen)}", flush=True)
    for group in chosen:
        bench.report(
            tuple(g for g in chosen if g != group), label=f"selected - {group}", against=chosen
        )
    bench.report(tuple(GROUPS), label="every group", against=chosen)


if __name__ == "__main__":
    main()
