"""The data contract: file-level errors stop the run, row-level problems are quarantined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import CANONICAL, VALIDATE_OUTPUTS, contract_params, run_validate_stage, transactions
from fraudlab.data.validate import (
    DataContractError,
    exact_duplicates,
    mixed_as_text,
    validate_transactions,
)


def _good(n: int = 20) -> pd.DataFrame:
    return transactions(
        [
            (i, f"2018-04-{1 + i % 20:02d} 10:00", i % 4, i % 3, float(i), int(i % 5 == 0))
            for i in range(n)
        ]
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.iloc[0:0], "no rows"),
        (
            lambda f: f.drop(columns=["terminal_id"]),
            r"missing required column\(s\) \['terminal_id'\]",
        ),
        (
            lambda f: f.assign(tx_datetime=f["tx_datetime"].astype("int64") // 10**9),
            "tx_datetime holds numbers: set source.timestamp_unit",
        ),
        (lambda f: f.assign(tx_fraud=0), "tx_fraud holds one class only"),
    ],
    ids=["empty", "missing-column", "epoch-without-unit", "one-class"],
)
def test_file_level_problems_stop_with_a_message_naming_them(validate_params, mutate, message):
    with pytest.raises(DataContractError, match=message):
        validate_transactions(mutate(_good()), validate_params, source=CANONICAL)


def test_row_problems_are_quarantined_with_every_reason(validate_params):
    frame = _good()
    frame.loc[1, "tx_amount"] = -5.0
    frame.loc[2, "tx_fraud"] = 2
    frame.loc[3, "tx_amount"] = np.nan
    frame.loc[4, ["tx_amount", "tx_fraud"]] = [-1.0, 7]
    result = validate_transactions(frame, validate_params, source=CANONICAL)
    reasons = result.rejected.set_index("transaction_id")["rejection_reason"].to_dict()
    assert reasons == {
        1: "negative tx_amount",
        2: "tx_fraud not 0/1",
        3: "null tx_amount",
        4: "negative tx_amount; tx_fraud not 0/1",
    }
    assert result.report["rows_rejected"] == 4
    assert result.report["rejected_by_reason"] == {
        "null tx_amount": 1,
        "negative tx_amount": 2,
        "tx_fraud not 0/1": 2,
    }
    assert len(result.clean) == 16
    assert not result.clean["transaction_id"].isin([1, 2, 3, 4]).any()


def test_exact_duplicates_are_the_rows_a_whole_row_comparison_finds():
    # only rows sharing an id (or lacking one) are compared whole: the answer must be what
    # comparing every row whole gives, first copy kept, with ids that repeat with other values,
    # missing ids, and a column that reads a number in some rows and text in others
    given = pd.DataFrame(
        {
            "transaction_id": ["1", "2", "1", None, "3", None, "1", "x", "x", None],
            "tx_amount": np.array([5, 6, 5, 7, 8, 7, "5", 1, 2, 9], dtype=object),
            "note": ["a", "b", "a", "c", "d", "c", "a", "e", "e", "c"],
        },
        index=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
    )
    parsed = pd.Series([1, 2, 1, None, 3, None, 1, None, None, None], dtype="Int64")
    expected = mixed_as_text(given).duplicated(keep="first").to_numpy()
    assert expected.tolist() == [False, False, True, False, False, True, True, False, False, False]
    assert exact_duplicates(given, parsed).tolist() == expected.tolist()


def test_exact_duplicates_are_dropped_and_conflicting_ids_quarantined(validate_params):
    frame = _good()
    conflicting = frame.iloc[[5]].assign(tx_amount=123.0)
    result = validate_transactions(
        pd.concat([frame, frame.iloc[[7, 7]], conflicting]), validate_params, source=CANONICAL
    )
    assert result.report["exact_duplicates_dropped"] == 2
    assert sorted(result.rejected["tx_amount"]) == [5.0, 123.0]  # both versions of id 5
    assert set(result.rejected["rejection_reason"]) == {
        "transaction_id repeated with different content"
    }
    assert result.clean["transaction_id"].is_unique
    assert result.report["rows_read"] == 23
    assert result.report["rows_kept"] == 19


def test_too_many_rejected_rows_stop_the_run_naming_each_rule():
    frame = _good()
    frame.loc[[1, 2, 3], "tx_amount"] = -1.0
    with pytest.raises(
        DataContractError,
        match=r"3 of 20 rows \(15.00%\) break the data contract.*\n  column tx_amount, rule "
        r"'negative tx_amount': 3 rows, e.g. row 2: -1.0, row 3: -1.0\nFix these rows",
    ):
        validate_transactions(
            frame, contract_params(max_rejected_share=0.1, example_values=2), source=CANONICAL
        )


def test_clean_rows_are_sorted_and_typed_and_input_untouched(validate_params):
    frame = _good().sample(frac=1.0, random_state=0)
    before = frame.copy()
    result = validate_transactions(frame, validate_params, source=CANONICAL)
    pd.testing.assert_frame_equal(frame, before)
    assert result.clean["tx_datetime"].is_monotonic_increasing
    assert result.clean["tx_fraud"].dtype == np.int8


def test_stage_exits_nonzero_names_the_file_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw.parquet"
    _good().drop(columns=["tx_amount"]).to_parquet(raw)
    done = run_validate_stage(raw, source=CANONICAL, max_rejected_share=0.01, out_dir=tmp_path)
    outputs = [tmp_path / name for name in VALIDATE_OUTPUTS]
    assert done.returncode == 1
    assert f"{raw}: missing required column(s) ['tx_amount']" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(p.exists() for p in outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw.parquet"]
