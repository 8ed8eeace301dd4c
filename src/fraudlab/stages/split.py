"""Stage ``split``: time-based train/test split and prequential validation folds."""

from __future__ import annotations

import logging

import pandas as pd

from fraudlab.cli import run, stage_parser
from fraudlab.io import read_parquet, time_span, write_json, write_parquet
from fraudlab.params import load_params
from fraudlab.schema import TX_DATETIME
from fraudlab.split import (
    FOLD_COLUMN,
    ROLE_COLUMN,
    needed_days,
    prequential_folds,
    split_summary,
    train_test_split,
)

log = logging.getLogger(__name__)
SECTIONS = ("split", "features")


def split(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("features", help="transactions with features (Parquet)")
    parser.add_argument("--train", required=True, help="training rows (Parquet)")
    parser.add_argument("--test", required=True, help="test rows, known cards removed (Parquet)")
    parser.add_argument("--folds", required=True, help="validation folds' rows (Parquet)")
    parser.add_argument("--summary", required=True, help="sizes of each part (JSON)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    params, delay = loaded["split"], loaded["features"].label_delay_days
    span = time_span(args.features)
    first, end = (pd.Timestamp(day) for day in needed_days(params, delay_days=delay))
    frame = read_parquet(
        args.features, filters=[(TX_DATETIME, ">=", first), (TX_DATETIME, "<", end)]
    )
    train, test = train_test_split(
        frame,
        train_start=params.train_start,
        train_days=params.train_days,
        delay_days=delay,
        test_days=params.test_days,
        span=span,
    )
    folds = prequential_folds(frame, params, delay_days=delay, span=span)
    summary = {"train": split_summary(train), "test": split_summary(test)}
    for (fold, role), part in folds.groupby([FOLD_COLUMN, ROLE_COLUMN], sort=True):
        summary[f"fold_{fold}_{role}"] = split_summary(part)
    write_parquet(train, args.train)
    write_parquet(test, args.test)
    write_parquet(folds, args.folds)
    write_json(summary, args.summary)
    log.info(
        "train %d rows (%d frauds), test %d rows (%d frauds), %d validation folds",
        len(train),
        summary["train"]["frauds"],
        len(test),
        summary["test"]["frauds"],
        params.n_folds,
    )


if __name__ == "__main__":
    run(split)
