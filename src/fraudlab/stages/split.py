"""Stage ``split``: time-based train/test split and prequential validation folds.

Only the days the split looks at are read, a period at a time, and the folds are written as they
come: the stage holds a few weeks of rows at most, whatever the size of the dataset.
"""

from __future__ import annotations

import logging

from fraudlab.core.io import (
    atomic_path,
    row_group_writer,
    time_span,
    write_json,
    write_parquet_into,
)
from fraudlab.core.params import load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.modeling.span import SpanError, check_span
from fraudlab.modeling.split import (
    FOLD_COLUMN,
    ROLE_COLUMN,
    dataset_reader,
    fold_parts,
    split_period,
    split_summary,
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
    read, span = dataset_reader(args.features), time_span(args.features)
    found = check_span(*span, split=params, features=loaded["features"])
    for warning in found.warnings:
        log.warning("%s", warning)
    if found.errors:
        raise SpanError("; ".join(found.errors))
    train, test = split_period(
        read,
        train_start=params.train_start,
        train_days=params.train_days,
        delay_days=delay,
        test_days=params.test_days,
        span=span,
    )
    summary = {"train": split_summary(train), "test": split_summary(test)}
    n_train, n_test = len(train), len(test)
    # nothing appears unless every fold is sound: all three go into place together at the end
    with (
        atomic_path(args.train) as train_path,
        atomic_path(args.test) as test_path,
        row_group_writer(args.folds) as folds,
    ):
        write_parquet_into(train, train_path)
        write_parquet_into(test, test_path)
        del train, test  # the folds come a period at a time, with nothing else held
        for part in fold_parts(read, params, delay_days=delay, span=span):
            fold, role = part[FOLD_COLUMN].iloc[0], part[ROLE_COLUMN].iloc[0]
            summary[f"fold_{fold}_{role}"] = split_summary(part)
            folds.write(part)
    write_json(summary, args.summary)
    log.info(
        "train %d rows (%d frauds), test %d rows (%d frauds), %d validation folds",
        n_train,
        summary["train"]["frauds"],
        n_test,
        summary["test"]["frauds"],
        params.n_folds,
    )


if __name__ == "__main__":
    run(split)
