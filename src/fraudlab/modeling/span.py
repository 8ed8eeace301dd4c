"""How many days of data the configured protocol needs, checked against the data's own span.

The protocol reaches back from ``split.train_start``: the earliest validation fold trains
``label_delay_days + test_days * n_folds`` days earlier, and the feature windows look back
``history_needed`` from each row. It reaches forward to the end of the test period, or of the
prequential test's last period (``split.test_folds``) when that is later. Data that
begin too late leave the earliest rows' windows partly empty (a warning: the features are then
lower than they would be, as on the first days of any dataset); data that do not cover a
period of the protocol cannot be split (an error, before the heavy work).
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import pandas as pd

from fraudlab.core.errors import UserError
from fraudlab.core.params import FeaturesParams, SplitParams
from fraudlab.features.names import history_needed
from fraudlab.modeling.split import fold_train_start, monitoring_start, prequential_test_end


class SpanError(UserError):
    """The data do not cover a period of the protocol."""


class Span(NamedTuple):
    history_from: dt.date  # the windows of the earliest fold's first rows are full from here
    folds_from: dt.date  # the earliest fold's training start
    test_until: dt.date  # the day after the last test period (exclusive end)


class SpanCheck(NamedTuple):
    errors: list[str]
    warnings: list[str]


def span_needed(split: SplitParams, features: FeaturesParams) -> Span:
    delay = features.label_delay_days
    folds_from = fold_train_start(split, delay_days=delay, fold=split.n_folds - 1)
    look_back = max(history_needed(features)).days
    return Span(
        history_from=folds_from - dt.timedelta(days=look_back),
        folds_from=folds_from,
        test_until=max(
            monitoring_start(split, delay_days=delay),
            prequential_test_end(split, delay_days=delay),
        ),
    )


def check_span(
    first: pd.Timestamp, last: pd.Timestamp, *, split: SplitParams, features: FeaturesParams
) -> SpanCheck:
    """Each period of the protocol against data from ``first`` to ``last`` (timestamps)."""
    need = span_needed(split, features)
    begins, ends = first.date(), last.date()
    test_last = need.test_until - dt.timedelta(days=1)
    days = (need.test_until - need.history_from).days
    # the train_start days that fit these data: the folds from the first day on (the windows
    # full once the history fits too), the test period up to the last day
    earliest = begins + (split.train_start - need.folds_from)
    full = begins + (split.train_start - need.history_from)
    latest = ends - (test_last - split.train_start)
    if earliest > latest:
        fits = (
            "these data hold fewer days than the protocol needs: lower split.n_folds, "
            "split.test_folds, split.train_days or split.test_days"
        )
    elif full > latest:
        fits = (
            f"for these data split.train_start can be {earliest}..{latest}, none with full "
            f"feature windows ({(full - latest).days} days short)"
        )
    else:
        fits = (
            f"for these data split.train_start can be {earliest}..{latest} ({full} or later "
            "for full feature windows)"
        )
    whole = f"the protocol needs {days} days, {need.history_from}..{need.test_until}; {fits}"
    errors, warnings = [], []
    several = split.test_folds > 1
    plural, verb = ("s of the prequential test", "") if several else ("", "s")
    lower = "split.test_folds or split.test_days" if several else "split.test_days"
    if ends < test_last:
        errors.append(
            f"the data end on {ends} but the test period{plural} run{verb} to {test_last}: "
            f"move split.train_start {(test_last - ends).days} days earlier, or lower "
            f"{lower} ({whole})"
        )
    if begins > need.folds_from:
        late = (begins - need.folds_from).days
        errors.append(
            f"the data begin on {begins} but the earliest of the {split.n_folds} validation "
            f"folds trains from {need.folds_from}: move split.train_start {late} days later, or "
            f"lower split.n_folds ({whole})"
        )
    elif begins > need.history_from:
        late = (begins - need.history_from).days
        warnings.append(
            f"the data begin on {begins}, {late} days after {need.history_from}, where the "
            f"feature windows of the earliest fold's first rows would be full: those rows' "
            f"windows are partly empty; move split.train_start {late} days later for full "
            f"windows ({whole})"
        )
    return SpanCheck(errors, warnings)
