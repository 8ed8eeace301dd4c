"""Time-aware train/test split with the label delay, and prequential validation folds (SPEC §5).

Periods are whole days counted from ``train_start``: train days [0, train_days), a gap of
``delay_days`` (labels of the last training days are not yet known), then test days
[train_days + delay_days, + test_days). A test row is dropped when its card is already known to be
compromised: a fraud of that card on a day from 0 up to (test day - delay - 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.io import read_parquet
from fraudlab.core.params import SplitParams

FOLD_COLUMN = "fold"
ROLE_COLUMN = "role"


class SplitError(UserError):
    """A period of the protocol has no data."""


def day_index(times: pd.Series, origin: dt.date) -> np.ndarray:
    """Whole days since midnight of ``origin`` (negative before it)."""
    delta = times.to_numpy(dtype="datetime64[ns]") - np.datetime64(origin.isoformat(), "ns")
    return delta // np.timedelta64(1, "D")


def _known_compromised(frame: pd.DataFrame, *, day: np.ndarray, delay_days: int) -> np.ndarray:
    """Mask of rows whose card had a fraud on a day in [0, day - delay - 1]."""
    is_counted_fraud = (frame[schema.TX_FRAUD].to_numpy() == 1) & (day >= 0)
    first_fraud = (
        pd.Series(day[is_counted_fraud])
        .groupby(frame[schema.CUSTOMER_ID].to_numpy()[is_counted_fraud])
        .min()
    )
    card_first_fraud = frame[schema.CUSTOMER_ID].map(first_fraud).to_numpy(dtype=np.float64)
    return card_first_fraud <= day - delay_days - 1  # NaN (no fraud) compares False


def _period(start: dt.date, days: int) -> str:
    return f"{start}..{start + dt.timedelta(days=days - 1)}"


def _require_both_classes(part: pd.DataFrame, *, what: str, fix: str) -> None:
    """A model cannot learn from, nor AP and AUC be computed on, a period of one class."""
    frauds = int((part[schema.TX_FRAUD] == 1).sum())
    if frauds == 0 or frauds == len(part):
        missing = "no frauds" if frauds == 0 else "no legitimate transactions"
        raise SplitError(f"{what} holds {missing} among its {len(part)} transactions: {fix}")


def train_test_split(
    frame: pd.DataFrame,
    *,
    train_start: dt.date,
    train_days: int,
    delay_days: int,
    test_days: int,
    name: str = "",
    test_part: str = "test",
    span: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by time; known compromised cards are removed from the test part. ``name`` (e.g.
    'validation fold 2') says which split a SplitError is about. Each part must be non-empty and
    hold both classes, the test part after the known cards are removed. ``test_part`` names that
    part in messages ('validation' in a fold). ``span``: the first and last time of the whole
    data when ``frame`` holds only the days the split looks at."""
    day = day_index(frame[schema.TX_DATETIME], train_start)
    in_train = (day >= 0) & (day < train_days)
    test_begin = train_days + delay_days
    in_test = (day >= test_begin) & (day < test_begin + test_days)
    first, last = span or _span(frame)
    covered = f"the data covers {first} to {last}: move split.train_start"
    of = f" of {name}" if name else ""
    train_period = _period(train_start, train_days)
    test_period = _period(train_start + dt.timedelta(days=test_begin), test_days)
    if not in_train.any():
        raise SplitError(
            f"no transactions in the training period{of}: {train_days} days from "
            f"{train_start}; {covered}"
        )
    if not in_test.any():
        raise SplitError(
            f"no transactions in the {test_part} period{of}: {test_days} days from "
            f"{train_start + dt.timedelta(days=test_begin)}; {covered}"
        )
    keep_test = in_test & ~_known_compromised(frame, day=day, delay_days=delay_days)
    if not keep_test.any():
        raise SplitError(
            f"no transactions left in the {test_part} period{of} ({test_period}): all "
            f"{int(in_test.sum())} belong to cards already known to be compromised; move "
            "split.train_start or lengthen split.test_days"
        )
    train = frame.loc[in_train].reset_index(drop=True)
    test = frame.loc[keep_test].reset_index(drop=True)
    fix = "move split.train_start or lengthen split.train_days / split.test_days"
    _require_both_classes(train, what=f"the training period{of} ({train_period})", fix=fix)
    _require_both_classes(test, what=f"the {test_part} period{of} ({test_period})", fix=fix)
    return train, test


def _span(frame: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    times = frame[schema.TX_DATETIME]
    return times.min(), times.max()


def fold_train_start(params: SplitParams, *, delay_days: int, fold: int) -> dt.date:
    """Training start of validation fold ``fold`` (0 = most recent).

    Fold 0's validation period ends where the test split's training period ends, so no
    validation label is newer than what is known when the model is trained; each further fold is
    shifted one test period back in time.
    """
    shift = delay_days + params.test_days + fold * params.test_days
    return params.train_start - dt.timedelta(days=shift)


def test_start(params: SplitParams, *, delay_days: int) -> dt.date:
    """The first day of the test period (a label delay after the training period)."""
    return params.train_start + dt.timedelta(days=params.train_days + delay_days)


def prequential_test_train_start(params: SplitParams, *, fold: int) -> dt.date:
    """Training start of prequential test fold ``fold`` (0 = the test split's own): each fold
    one test period later, so the folds' test periods follow each other from the test period
    on (the handbook's test protocol after model selection)."""
    return params.train_start + dt.timedelta(days=fold * params.test_days)


def prequential_test_end(params: SplitParams, *, delay_days: int) -> dt.date:
    """The day after the last prequential test period (the test period's end without any)."""
    last = prequential_test_train_start(params, fold=max(params.test_folds - 1, 0))
    return last + dt.timedelta(days=params.train_days + delay_days + params.test_days)


def monitoring_start(params: SplitParams, *, delay_days: int) -> dt.date:
    """The day after the test period: where the ``monitor`` stage's weeks begin."""
    return test_start(params, delay_days=delay_days) + dt.timedelta(days=params.test_days)


# Rows of [start, end) (midnights), with the given columns (None: all), in (time, id) order:
# a frame in memory, or the days of a large dataset read from disk (``dataset_reader``).
Reader = Callable[[dt.date, dt.date, "list[str] | None"], pd.DataFrame]


def dataset_reader(path: str | Path) -> Reader:
    """The days of a Parquet file or dataset directory (row groups outside are skipped)."""

    def read(start: dt.date, end: dt.date, columns: list[str] | None) -> pd.DataFrame:
        window = [
            (schema.TX_DATETIME, ">=", pd.Timestamp(start)),
            (schema.TX_DATETIME, "<", pd.Timestamp(end)),
        ]
        return read_parquet(path, columns, filters=window)

    return read


def frame_reader(frame: pd.DataFrame) -> Reader:
    times = frame[schema.TX_DATETIME]

    def read(start: dt.date, end: dt.date, columns: list[str] | None) -> pd.DataFrame:
        inside = (times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))
        rows = frame.loc[inside] if columns is None else frame.loc[inside, columns]
        return rows.reset_index(drop=True)

    return read


_POSITION = "__position"


def split_period(
    read: Reader,
    *,
    train_start: dt.date,
    train_days: int,
    delay_days: int,
    test_days: int,
    span: tuple[pd.Timestamp, pd.Timestamp],
    name: str = "",
    test_part: str = "test",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train_test_split`` reading only what it needs: the three columns the split looks at
    over its days, then the training days and the test days whole, one after the other."""
    test_begin = train_start + dt.timedelta(days=train_days + delay_days)
    narrow = read(
        train_start,
        test_begin + dt.timedelta(days=test_days),
        [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TX_FRAUD],
    )
    narrow[_POSITION] = np.arange(len(narrow))
    _, kept = train_test_split(
        narrow,
        train_start=train_start,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        name=name,
        test_part=test_part,
        span=span,
    )
    train = read(train_start, train_start + dt.timedelta(days=train_days), None)
    before_test = int((narrow[schema.TX_DATETIME] < pd.Timestamp(test_begin)).sum())
    test = read(test_begin, test_begin + dt.timedelta(days=test_days), None)
    test = test.iloc[kept[_POSITION].to_numpy() - before_test].reset_index(drop=True)
    return train, test


def _protocol_period(
    read: Reader,
    params: SplitParams,
    start: dt.date,
    *,
    delay_days: int,
    span: tuple[pd.Timestamp, pd.Timestamp],
    name: str,
    test_part: str = "test",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``split_period`` with the protocol's period lengths, from training start ``start``."""
    return split_period(
        read, train_start=start, train_days=params.train_days, delay_days=delay_days,
        test_days=params.test_days, span=span, name=name, test_part=test_part,
    )  # fmt: skip


def fold_parts(
    read: Reader,
    params: SplitParams,
    *,
    delay_days: int,
    span: tuple[pd.Timestamp, pd.Timestamp],
) -> Iterator[pd.DataFrame]:
    """Each fold's train rows, then its validation rows, tagged with ``fold`` and ``role``:
    one period in memory at a time."""
    for fold in range(params.n_folds):
        start = fold_train_start(params, delay_days=delay_days, fold=fold)
        if start < span[0].date():
            raise SplitError(
                f"validation fold {fold} would start training on {start}, before "
                f"the first transaction; lower split.n_folds or move train_start"
            )
        train, valid = _protocol_period(
            read, params, start, delay_days=delay_days, span=span, name=f"fold {fold}",
            test_part="validation",
        )  # fmt: skip
        yield train.assign(**{FOLD_COLUMN: fold, ROLE_COLUMN: "train"})
        yield valid.assign(**{FOLD_COLUMN: fold, ROLE_COLUMN: "valid"})


def prequential_test_parts(
    read: Reader,
    params: SplitParams,
    *,
    delay_days: int,
    span: tuple[pd.Timestamp, pd.Timestamp],
) -> Iterator[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Each prequential test fold's training and test periods (``a..b``) and rows, in time
    order: fold 0 is the test split itself, each next one a test period later; cards known to be
    compromised by its training period's end are removed from each test period, as for the test
    split."""
    for fold in range(params.test_folds):
        start = prequential_test_train_start(params, fold=fold)
        train, test = _protocol_period(
            read, params, start, delay_days=delay_days, span=span,
            name=f"prequential test fold {fold}",
        )  # fmt: skip
        test_begin = start + dt.timedelta(days=params.train_days + delay_days)
        yield (
            _period(start, params.train_days),
            _period(test_begin, params.test_days),
            train,
            test,
        )


def prequential_folds(
    frame: pd.DataFrame,
    params: SplitParams,
    *,
    delay_days: int,
    span: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """All folds' train and validation rows, tagged with ``fold`` and ``role``. ``span`` as
    for ``train_test_split``."""
    parts = fold_parts(
        frame_reader(frame), params, delay_days=delay_days, span=span or _span(frame)
    )
    return pd.concat(list(parts), ignore_index=True)


def split_summary(frame: pd.DataFrame) -> dict[str, float | int | str]:
    """Size, frauds, cards and period of one part, for the split metrics."""
    return {
        "transactions": len(frame),
        "frauds": int(frame[schema.TX_FRAUD].sum()),
        "fraud_rate": float(frame[schema.TX_FRAUD].mean()),
        "cards": int(frame[schema.CUSTOMER_ID].nunique()),
        "first_day": str(frame[schema.TX_DATETIME].min().date()),
        "last_day": str(frame[schema.TX_DATETIME].max().date()),
    }
