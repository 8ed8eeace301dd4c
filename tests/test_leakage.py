"""The leakage battery: no feature of a transaction depends on anything it could not know.

For several cut rows, with exact times and with times floored to the hour (many rows then share
a timestamp, so the (time, id) rule is what decides), each perturbation below touches only what
a row up to the cut (in (time, id) order) must not see; every feature of every such row must stay
bit-identical:

* every later amount randomised;
* a share of the later rows deleted;
* rows inserted at the cut's timestamp, on the cut row's card and terminal, with larger ids;
* every label inside the delay window (time > cut - delay) randomised.

The battery runs on ``feature_names(params)``, whatever the feature set, so a new feature is
covered as soon as it exists. A control computes the terminal features with no delay: the
randomised labels then move them, so the battery can fail."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams
from fraudlab.features.batch import build_features
from fraudlab.features.names import KNOWN_LABEL_FEATURES, feature_names

CUT_QUANTILES = (0.35, 0.6, 0.85)


@pytest.fixture(scope="module", params=["exact", "floored to the hour"])
def frame(request, small_transactions) -> pd.DataFrame:
    frame = small_transactions.sort_values(schema.SORT_KEYS, kind="stable")
    if request.param != "exact":
        frame = frame.assign(**{schema.TX_DATETIME: frame[schema.TX_DATETIME].dt.floor("h")})
        # rows of one customer or terminal now share timestamps: the ids must order them
        assert frame.duplicated([schema.TX_DATETIME, schema.CUSTOMER_ID]).any()
    return frame.reset_index(drop=True)


def _up_to(frame: pd.DataFrame, cut: pd.Series) -> np.ndarray:
    """Rows at or before the cut row in (time, id) order."""
    times, ids = frame[schema.TX_DATETIME], frame[schema.TRANSACTION_ID]
    cut_time, cut_id = cut[schema.TX_DATETIME], cut[schema.TRANSACTION_ID]
    return ((times < cut_time) | ((times == cut_time) & (ids <= cut_id))).to_numpy()


def _cuts(frame: pd.DataFrame) -> list[pd.Series]:
    return [frame.iloc[int(q * (len(frame) - 1))] for q in CUT_QUANTILES]


def _features_up_to(frame: pd.DataFrame, cut: pd.Series, params: FeaturesParams) -> pd.DataFrame:
    built = build_features(frame, params)
    kept = built.loc[_up_to(built, cut), [schema.TRANSACTION_ID, *feature_names(params)]]
    return kept.sort_values(schema.TRANSACTION_ID).reset_index(drop=True)


def _later_amounts_randomised(frame, cut, rng, params):
    later = ~_up_to(frame, cut)
    amounts = frame[schema.TX_AMOUNT].to_numpy(copy=True)
    amounts[later] = rng.uniform(0.01, 5000.0, later.sum()).round(2)
    return frame.assign(**{schema.TX_AMOUNT: amounts})


def _later_rows_deleted(frame, cut, rng, params):
    later = ~_up_to(frame, cut)
    dropped = later & (rng.random(len(frame)) < 0.4)
    assert dropped.any()
    return frame.loc[~dropped]


def _rows_inserted_at_the_cut(frame, cut, rng, params):
    first_id = int(frame[schema.TRANSACTION_ID].max()) + 1
    inserted = pd.DataFrame(
        {
            schema.TRANSACTION_ID: np.arange(first_id, first_id + 5),
            schema.TX_DATETIME: cut[schema.TX_DATETIME],
            schema.CUSTOMER_ID: cut[schema.CUSTOMER_ID],
            schema.TERMINAL_ID: cut[schema.TERMINAL_ID],
            schema.TX_AMOUNT: rng.uniform(0.01, 5000.0, 5).round(2),
            schema.TX_FRAUD: rng.integers(0, 2, 5),
        }
    ).astype(frame[list(schema.REQUIRED_COLUMNS)].dtypes.to_dict())
    return pd.concat([frame, inserted], ignore_index=True)


def _labels_in_the_delay_randomised(frame, cut, rng, params):
    delay = pd.Timedelta(days=params.label_delay_days)
    unknown = (frame[schema.TX_DATETIME] > cut[schema.TX_DATETIME] - delay).to_numpy()
    labels = frame[schema.TX_FRAUD].to_numpy(copy=True)
    labels[unknown] = rng.integers(0, 2, unknown.sum())
    assert unknown.sum() > 100
    return frame.assign(**{schema.TX_FRAUD: labels})


PERTURBATIONS = [
    _later_amounts_randomised,
    _later_rows_deleted,
    _rows_inserted_at_the_cut,
    _labels_in_the_delay_randomised,
]


@pytest.mark.parametrize("perturb", PERTURBATIONS, ids=lambda f: f.__name__.strip("_"))
def test_no_feature_up_to_the_cut_sees_what_it_could_not_know(frame, perturb, features_params):
    params = features_params
    for number, cut in enumerate(_cuts(frame)):
        rng = np.random.default_rng(number)
        expected = _features_up_to(frame, cut, params)
        got = _features_up_to(perturb(frame, cut, rng, params), cut, params)
        assert len(expected) > 100
        # bit for bit: assert_frame_equal with check_exact compares every value exactly
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_the_battery_catches_a_feature_that_reads_labels_inside_the_delay(frame, features_params):
    """The control: terminal features computed with no delay (params refuse it, so the copy
    skips validation) see the randomised labels, and the battery's comparison fails."""
    params = features_params
    leaky = params.model_copy(update={"label_delay_days": 0})
    label_based = [
        name for name in feature_names(params) if "risk" in name or name in KNOWN_LABEL_FEATURES
    ]
    assert len(label_based) == 3 + len(KNOWN_LABEL_FEATURES)
    moved = []
    for number, cut in enumerate(_cuts(frame)):
        rng = np.random.default_rng(number)
        tampered = _labels_in_the_delay_randomised(frame, cut, rng, params)
        expected = _features_up_to(frame, cut, leaky)
        got = _features_up_to(tampered, cut, leaky)
        moved.append({name: not got[name].equals(expected[name]) for name in label_based})
    # every label-based feature moves at every cut: each one could fail the battery
    assert all(all(cut.values()) for cut in moved), moved
