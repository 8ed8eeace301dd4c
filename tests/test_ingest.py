"""Foreign layouts onto the canonical schema by params alone; unreadable files and values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import VALIDATE_OUTPUTS, contract_params, run_validate_stage, source_params
from fraudlab.core import schema
from fraudlab.core.params import ParamsError, parse_section
from fraudlab.data.ingest import (
    columns_to_read,
    map_columns,
    parse_columns,
    read_header,
    read_transactions,
)
from fraudlab.data.validate import DataContractError, validate_transactions

UPPER = {c: c.upper() for c in schema.REQUIRED_COLUMNS}
TEXT_IDS = ["customer_id", "terminal_id"]  # the foreign layouts below use card tokens
FOREIGN = source_params(columns=UPPER, text_ids=TEXT_IDS)
LENIENT = contract_params(max_rejected_share=0.9, example_values=3)


def _foreign(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*UPPER.values(), "TX_TIME_DAYS"])


def test_upper_case_layout_with_text_timestamps_and_label_words():
    raw = _foreign(
        [
            (2, "2018-04-01 10:00:00", "c1", "t9", "12.50", "legit", 0),
            (1, "2018-04-01T09:00:00Z", "c2", "t9", "7", "FRAUD", 0),
            (3, "2018-04-02 01:00:00+02:00", "c1", "t8", "3.25", "Legit", 1),
        ]
    )
    result = validate_transactions(raw, LENIENT, source=FOREIGN)
    clean = result.clean
    assert clean["transaction_id"].tolist() == [1, 2, 3]  # sorted by time
    assert clean["tx_datetime"].tolist() == [
        pd.Timestamp("2018-04-01 09:00"),
        pd.Timestamp("2018-04-01 10:00"),
        pd.Timestamp("2018-04-01 23:00"),  # +02:00 converted to UTC
    ]
    assert clean["tx_amount"].tolist() == [7.0, 12.5, 3.25]
    assert clean["tx_fraud"].tolist() == [1, 0, 0]
    assert clean["customer_id"].tolist() == ["c2", "c1", "c1"]
    assert clean["TX_TIME_DAYS"].tolist() == [0, 0, 1]  # extra columns pass through
    assert str(clean["tx_datetime"].dtype) == "datetime64[ns]"


def test_epoch_seconds_booleans_and_a_local_timezone():
    raw = pd.DataFrame(
        {
            "id": [1, 2],
            "when": [1522576800, 1522580400],
            "card": [5, 6],
            "pos": [7, 7],
            "amount": [1.0, 2.0],
            "is_fraud": [True, False],
        }
    )
    columns = {
        "transaction_id": "id",
        "tx_datetime": "when",
        "customer_id": "card",
        "terminal_id": "pos",
        "tx_amount": "amount",
        "tx_fraud": "is_fraud",
    }
    parsed = parse_columns(map_columns(raw, columns), source_params(timestamp_unit="s"))
    assert parsed.frame["tx_datetime"].tolist() == [
        pd.Timestamp("2018-04-01 10:00"),
        pd.Timestamp("2018-04-01 11:00"),
    ]
    assert parsed.frame["tx_fraud"].tolist() == [1, 0]

    local = pd.DataFrame(
        {
            "tx_datetime": ["2018-07-01 12:00"],
            "transaction_id": [1],
            "tx_amount": [1.0],
            "tx_fraud": [0],
        }
    )
    parsed = parse_columns(local, source_params(timezone="Europe/Brussels"))
    assert parsed.frame["tx_datetime"].tolist() == [pd.Timestamp("2018-07-01 10:00")]


def test_unparseable_values_are_quarantined_with_their_reason_and_kept_as_given():
    raw = _foreign(
        [
            (1, "2018-04-01 10:00", "c1", "t1", "12.5", "legit", 0),
            (2, "yesterday", "c1", "t1", "3", "fraud", 0),
            (3, "2018-04-01 11:00", "c2", "t1", "12,50", "legit", 0),
            (4, "2018-04-01 12:00", "c2", "t1", "4", "maybe", 0),
            ("x5", "2018-04-01 13:00", "c3", "t1", "5", "fraud", 0),
            (6, "2018-04-01 14:00", "c3", "t1", None, "legit", 0),
            (7, "2018-04-01 15:00", "c4", "t2", "1", "fraud", 0),
            (8, "2018-04-01 16:00", "c4", "t2", "2", "legit", 0),
        ]
    )
    result = validate_transactions(raw, LENIENT, source=FOREIGN)
    reasons = dict(
        zip(
            result.rejected["transaction_id"].astype(str),
            result.rejected["rejection_reason"],
            strict=True,
        )
    )
    assert reasons == {
        "2": "unparseable tx_datetime",
        "3": "unparseable tx_amount",
        "4": "unparseable tx_fraud",
        "x5": "transaction_id not an integer",
        "6": "null tx_amount",
    }
    assert result.rejected.loc[result.rejected["transaction_id"] == "3", "tx_amount"].item() == (
        "12,50"
    )
    assert result.clean["transaction_id"].tolist() == [1, 7, 8]


def test_mapping_a_column_the_file_lacks_names_it():
    raw = _foreign([(1, "2018-04-01 10:00", "c1", "t1", "1", "legit", 0)])
    with pytest.raises(DataContractError, match=r"\{'tx_amount': 'AMOUNT'\}.*TX_AMOUNT"):
        validate_transactions(
            raw, LENIENT, source=source_params(columns=UPPER | {"tx_amount": "AMOUNT"})
        )


def test_bad_source_params_fail_at_load():
    base = source_params().model_dump()
    with pytest.raises(ParamsError, match="unknown canonical name"):
        parse_section("source", base | {"columns": {"amount": "AMT"}})
    with pytest.raises(ParamsError, match="unknown timezone 'Mars/Olympus'"):
        parse_section("source", base | {"timezone": "Mars/Olympus"})
    with pytest.raises(ParamsError, match="both fraud and legit"):
        parse_section("source", base | {"legit_values": ["fraud"]})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("tx.xlsx", b"PK\x03\x04", r"unknown file type '\.xlsx'"),
        ("tx.csv", b"", "empty file"),
        ("tx.csv", "transaction_id,tx_amount\n1,caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("tx.parquet", b"\x00\x01garbage" * 50, "not a readable parquet file"),
    ],
    ids=["unknown-type", "empty-csv", "latin-1", "garbage-parquet"],
)
def test_unreadable_files_fail_with_the_reason(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataContractError, match=message):
        read_transactions(path)


def test_stage_reads_a_foreign_csv_and_leaves_it_untouched(tmp_path):
    raw = tmp_path / "export.csv"
    raw.write_text(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
        "1,2018-04-01 10:00:00,7,3,10.5,0\n2,2018-04-01 11:00:00,8,3,99.0,1\n"
        "3,not a date,8,3,5.0,0\n"
    )
    before = raw.read_bytes()
    done = run_validate_stage(
        raw,
        source=source_params(path=str(raw), columns=UPPER, text_ids=TEXT_IDS),
        max_rejected_share=0.5,
        out_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = {name: tmp_path / name for name in VALIDATE_OUTPUTS}
    assert raw.read_bytes() == before
    assert pd.read_parquet(out["clean.parquet"])["transaction_id"].tolist() == [1, 2]
    rejected = pd.read_parquet(out["rejected.parquet"])
    assert rejected["rejection_reason"].tolist() == ["unparseable tx_datetime"]
    assert rejected["tx_datetime"].tolist() == ["not a date"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_only_the_canonical_and_declared_extra_columns_are_read(tmp_path, kind):
    raw = _foreign(
        [
            (1, "2018-04-01 10:00", "c1", "t1", "12.5", "legit", 0),
            (2, "2018-04-01 11:00", "c2", "t1", "3", "fraud", 1),
        ]
    ).assign(MERCHANT=["m1", "m2"], NOTES=["free text", "more"])
    path = tmp_path / f"tx.{kind}"
    raw.to_csv(path, index=False) if kind == "csv" else raw.to_parquet(path)
    header = read_header(path)
    assert header == list(raw.columns)

    declared = source_params(columns=UPPER, extra_columns=["MERCHANT"], text_ids=TEXT_IDS)
    columns = columns_to_read(header, declared)
    assert columns == [*UPPER.values(), "MERCHANT"]
    clean = validate_transactions(read_transactions(path, columns), LENIENT, source=declared).clean
    assert list(clean.columns) == [*UPPER, "MERCHANT"]
    assert clean["MERCHANT"].tolist() == ["m1", "m2"]

    assert columns_to_read(header, source_params(columns=UPPER)) is None  # extra_columns: all
    unlabelled = source_params(columns={c: n for c, n in UPPER.items() if c != "tx_fraud"})
    with pytest.raises(DataContractError, match=r"missing required column\(s\) \['tx_fraud'"):
        columns_to_read(header, unlabelled)


def _parquet_ids(tmp_path, **columns) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "transaction_id": pd.array([1, 2, 3], dtype="int64"),
            "tx_datetime": pd.to_datetime(["2018-04-01 10:00"] * 3),
            "customer_id": pd.array([1, 2, 3], dtype="int64"),
            "terminal_id": pd.array([1, 2, 3], dtype="int64"),
            "tx_amount": [1.0, 2.0, 3.0],
            "tx_fraud": [0, 1, 0],
        }
    ).assign(**columns)
    path = tmp_path / "ids.parquet"
    frame.to_parquet(path)
    return read_transactions(path)


def _reasons(parsed) -> dict[str, list[int]]:
    return {rule: list(mask.nonzero()[0]) for rule, (_, mask) in parsed.problems.items()}


def test_parquet_ids_int64_cannot_hold_are_marked_not_wrapped(tmp_path):
    raw = _parquet_ids(tmp_path, customer_id=np.array([1, 2**63, 2**64 - 1], dtype=np.uint64))
    parsed = parse_columns(raw, source_params())
    assert _reasons(parsed) == {"customer_id outside the int64 range": [1, 2]}
    assert parsed.frame["customer_id"].tolist()[0] == 1


def test_parquet_float_ids_are_kept_only_when_exact(tmp_path):
    raw = _parquet_ids(tmp_path, terminal_id=[7.0, 2.0**53 + 2, float("nan")])
    parsed = parse_columns(raw, source_params())
    assert _reasons(parsed) == {"terminal_id not an exact integer": [1]}  # NaN: a null
    assert parsed.frame["terminal_id"].tolist()[0] == 7


def test_integer_text_ids_are_parsed_digit_by_digit():
    values = pd.Series(
        ["9223372036854775807", "-9223372036854775808", "9223372036854775808", " 42 "]
    )
    parsed = parse_columns(
        pd.DataFrame({"customer_id": values}), source_params()
    )  # other columns absent: only this one is parsed
    assert parsed.frame["customer_id"].tolist()[:2] == [2**63 - 1, -(2**63)]
    assert parsed.frame["customer_id"].tolist()[3] == 42
    assert _reasons(parsed) == {"customer_id outside the int64 range": [2]}
