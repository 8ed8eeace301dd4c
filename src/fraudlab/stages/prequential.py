"""Stage ``prequential``: the prequential test protocol, the handbook's test after model
selection. The configured model is refit on each of ``split.test_folds`` training periods, one
test period apart from the test split's own. Each is scored on its own test period (a label delay
later, with the cards known to be compromised by then removed). The report gives each period's
AUC ROC, AP and CP@k (cards detected on an earlier day of the period dropped from later days), and
their mean and standard deviation.

Fold 0 is the test split: its figures are the evaluate stage's test metrics, refit from the same
rows with the same seeds. On the reference data the four test periods are 2018-08-08..09-04, the
weeks of the handbook's table "after model selection"."""

from __future__ import annotations

import logging
import time

from fraudlab.core.io import time_span, write_json
from fraudlab.core.params import load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import SCORE, mean_and_std, ranking_metrics
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.modeling.split import dataset_reader, prequential_test_parts, split_summary
from fraudlab.scaleout.engine import engine_config
from fraudlab.scaleout.training import training_client

log = logging.getLogger(__name__)
SECTIONS = ("split", "features", "train", "evaluate")


def prequential(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("features", help="transactions with features (Parquet)")
    parser.add_argument("--out", required=True, help="the protocol's metrics (JSON)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    split, train = loaded["split"], loaded["train"]
    names, k = feature_names(loaded["features"]), loaded["evaluate"].top_k
    parts = prequential_test_parts(
        dataset_reader(args.features),
        split,
        delay_days=loaded["features"].label_delay_days,
        span=time_span(args.features),
    )
    folds, per_fold = {}, []
    with training_client(train.dask_workers, engine_config()) as client:
        for train_period, test_period, train_rows, test_rows in parts:
            started = time.perf_counter()
            pipeline = fit_pipeline(train_rows, names, params=train, client=client)
            scores = predict_scores(pipeline, test_rows, features=names)
            found = ranking_metrics(test_rows.assign(**{SCORE: scores}), k)
            per_fold.append(found)
            summary = split_summary(test_rows)
            folds[test_period] = {
                "train": train_period,
                "transactions": summary["transactions"],
                "frauds": summary["frauds"],
                **found,
            }
            log.info("test %s (trained on %s, %.1f s): %s", test_period, train_period,
                     time.perf_counter() - started,
                     ", ".join(f"{n} {v:.4f}" for n, v in found.items()))  # fmt: skip
    # split.test_folds 0: no test period, an empty report
    write_json({**(mean_and_std(per_fold) if per_fold else {}), "folds": folds}, args.out)


if __name__ == "__main__":
    run(prequential)
