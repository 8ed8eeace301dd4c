"""The bad-input battery: each case runs a real stage on a file the way `dvc repro` does and asserts
the exit status, that the message names the problem, and what was kept or quarantined.

The stages run in this process through ``cli.run`` (the same wrapper `python -m` uses) so thirty
cases cost seconds; test_validate and test_ingest run the stage as a process too."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from conftest import STORAGE_YAML, contract_params, source_params
from fraudlab.scaleout.engine import PARTITIONS_VAR
from fraudlab.stages.validate import validate
from helpers import run_stage

HEADER = "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount,tx_fraud"
N_ROWS = 40


def _good_rows() -> list[str]:
    return [
        f"{i},2018-04-{1 + i % 28:02d} {i % 24:02d}:15:00,{i % 7},{i % 5},{i * 1.5:.2f},"
        f"{int(i % 5 == 0)}"
        for i in range(1, N_ROWS + 1)
    ]


def _csv(rows: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def _replace(changes: dict[int, str], header: str = HEADER) -> bytes:
    """The good file with rows (1-based transaction ids) replaced by the given lines."""
    rows = _good_rows()
    for tx_id, line in changes.items():
        rows[tx_id - 1] = line
    return _csv(rows, header)


def _field(tx_id: int, column: str, value: str) -> str:
    values = _good_rows()[tx_id - 1].split(",")
    values[HEADER.split(",").index(column)] = value
    return ",".join(values)


def _column_dropped(column: str) -> bytes:
    frame = pd.read_csv(pd.io.common.BytesIO(_csv(_good_rows())))
    return frame.drop(columns=[column]).to_csv(index=False).encode()


def _epoch_seconds() -> bytes:
    frame = pd.read_csv(pd.io.common.BytesIO(_csv(_good_rows())), parse_dates=["tx_datetime"])
    seconds = frame["tx_datetime"].astype("datetime64[s]").astype("int64")
    return frame.assign(tx_datetime=seconds).to_csv(index=False).encode()


def _garbage_parquet() -> bytes:
    return b"PAR1" + bytes(range(256)) * 4


LATIN_1 = _replace({3: "3,2018-04-04 03:15:00,Andr\xe9,3,4.50,0"}).decode().encode("latin-1")

# 40,000 rows (1.6 MB); the last label reads "1\xe9"
LATE_LATIN_1 = _csv(_good_rows() * 1000)[:-1] + "\xe9\n".encode("latin-1")


@dataclass(frozen=True)
class Case:
    id: str
    content: bytes | None  # None: the file does not exist
    message: str  # a regex the log must contain
    exit_code: int = 1
    name: str = "tx.csv"
    source: dict = field(default_factory=dict)
    contract: dict = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)  # transaction_id -> reason
    duplicates: int = 0
    folded: int = 0  # re-exported copies: equal to an earlier row once parsed
    amounts_given: dict[str, str] = field(default_factory=dict)  # rejected id -> amount text


FILE_LEVEL = [
    Case(
        "unknown-type", b"PK\x03\x04" + b"\x00" * 60, r"unknown file type '\.xlsx'", name="t.xlsx"
    ),
    Case("empty-file", b"", "empty file: no header and no rows"),
    Case("header-only", _csv([]), "no rows: the input holds no transactions"),
    Case("missing-file", None, "No such file or directory"),
    Case(
        "latin-1-text",  # the é of line 4 (the third data row) is byte 188 of the file
        LATIN_1,
        rf"not UTF-8 text \(line 4, byte {LATIN_1.index(0xE9)} of the file\): re-export as UTF-8",
    ),
    Case(
        "latin-1-past-the-first-megabyte",  # the position is in the file, not in a buffer
        LATE_LATIN_1,
        rf"not UTF-8 text \(line 40001, byte {LATE_LATIN_1.index(0xE9)} of the file\)",
    ),
    Case(
        "binary-garbage", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not CSV text but a PNG image"
    ),
    Case("parquet-named-csv", b"PAR1" + bytes(200), "not CSV text but a Parquet file: name it"),
    Case("xlsx-named-csv", b"PK\x03\x04" + bytes(200), r"a ZIP archive \(an \.xlsx workbook\?\)"),
    Case("garbage-parquet", _garbage_parquet(), "not a readable parquet file", name="t.parquet"),
    Case(
        "ragged-row",
        _replace({4: _good_rows()[3] + ",surplus"}),
        "not a readable csv file: .*Expected 6 fields in line 5, saw 7",
    ),
    Case(
        "missing-required-column",
        _column_dropped("tx_amount"),
        r"missing required column\(s\) \['tx_amount'\]; columns present: \['transaction_id'",
    ),
    Case(
        "mapping-names-missing-column",
        _csv(_good_rows()),
        r"source.columns names column\(s\) the file does not have: \{'tx_amount': 'AMOUNT'\}",
        source={"columns": {"tx_amount": "AMOUNT"}},
    ),
    Case(
        "mapping-clashes-with-a-column",
        _csv([r + ",1.0" for r in _good_rows()], HEADER + ",amount_eur"),
        r"column\(s\) \['tx_amount'\] exist in the file and are also mapped",
        source={"columns": {"tx_amount": "amount_eur"}},
    ),
    Case(
        "extra-column-missing",
        _csv(_good_rows()),
        r"source.extra_columns names column\(s\) the file does not have: \['merchant'\]",
        source={"extra_columns": ["merchant"]},
    ),
    Case(
        "trailing-delimiter-on-every-row",  # the header has none: never a shifted frame
        _csv([row + "," for row in _good_rows()]),
        "kept 40 of 40 rows",
        exit_code=0,
    ),
    Case(
        "trailing-delimiter-and-a-value-after-it",
        _csv([row + ("," if i != 4 else ",surplus") for i, row in enumerate(_good_rows())]),
        r"data row 5 has 7 fields where the header has 6 \(a value after the last column: "
        r"'surplus'\)",
    ),
    Case(
        "label-words-unknown",  # Y/N with the default label params
        _csv(
            [row[: row.rindex(",")] + (",Y" if row.endswith("1") else ",N") for row in _good_rows()]
        ),
        r"tx_fraud holds label words no label param lists: 'N', 'Y'\. List each in "
        r"source\.fraud_values or source\.legit_values",
    ),
    Case(
        "semicolon-separated",
        _csv([r.replace(",", ";") for r in _good_rows()], HEADER.replace(",", ";")),
        r"the header is one column holding ';': the file is not comma-separated",
    ),
    Case(
        "epoch-numbers-without-unit",
        _epoch_seconds(),
        "column tx_datetime holds numbers: set source.timestamp_unit",
    ),
    Case(
        "all-dates-outside-range",  # epoch seconds read as milliseconds land in January 1970
        _epoch_seconds(),
        r"40 of 40 rows \(100.00%\) break the data contract.*"
        r"rule 'tx_datetime outside 2000-01-01..2099-12-31': 40 rows, e.g. row 1: "
        r".*Every tx_datetime is outside the range: check source.timestamp_unit",
        source={"timestamp_unit": "ms"},
    ),
    Case(
        "one-class-labels",
        _csv([r[:-1] + "0" for r in _good_rows()]),
        r"column tx_fraud holds one class only \(\[0\]\) in all 40 kept rows",
    ),
    Case(
        "too-many-rejected-every-rule-reported",
        _replace(
            {i: _field(i, "tx_amount", "-1.00") for i in (2, 3, 4, 6, 7)}
            | {8: _field(8, "tx_datetime", "soon"), 9: _field(9, "customer_id", "")}
        ),
        r"7 of 40 rows \(17.50%\) break the data contract, more than "
        r"validate.max_rejected_share \(10.00%\):\n"
        r"  column tx_datetime, rule 'unparseable tx_datetime': 1 rows, e.g. row 8: 'soon'\n"
        r"  column customer_id, rule 'null customer_id': 1 rows, e.g. row 9: empty\n"
        r"  column tx_amount, rule 'negative tx_amount': 5 rows, e.g. row 2: '-1.00' \(read as "
        r"-1.0\), row 3: '-1.00' \(read as -1.0\), row 4: '-1.00' \(read as -1.0\)\n.*Nothing "
        r"was written: .* do not exist yet",
        contract={"max_rejected_share": 0.1, "example_values": 3},
    ),
]

ROW_LEVEL = [
    Case(
        "negative-amount",
        _replace({3: _field(3, "tx_amount", "-4.50")}),
        "quarantined 1 rows",
        exit_code=0,
        quarantined={"3": "negative tx_amount"},
    ),
    Case(
        "decimal-comma-amount",
        _replace({3: '3,2018-04-04 03:15:00,3,3,"4,50",0'}),
        r"unparseable tx_amount': 1 rows, e.g. row 3: '4,50'",
        exit_code=0,
        quarantined={"3": "unparseable tx_amount"},
    ),
    Case(
        "unparseable-date",
        _replace({7: _field(7, "tx_datetime", "yesterday")}),
        "unparseable tx_datetime",
        exit_code=0,
        quarantined={"7": "unparseable tx_datetime"},
    ),
    Case(
        "date-outside-range",
        _replace({7: _field(7, "tx_datetime", "1970-01-01 00:00:07")}),
        r"rule 'tx_datetime outside 2000-01-01..2099-12-31': 1 rows, e.g. row 7: "
        r"'1970-01-01 00:00:07'",
        exit_code=0,
        quarantined={"7": "tx_datetime outside 2000-01-01..2099-12-31"},
    ),
    Case(
        "local-time-in-dst-gap",  # 02:30 did not exist in Brussels on 2018-03-25
        _replace({7: _field(7, "tx_datetime", "2018-03-25 02:30:00")}),
        r"rule 'tx_datetime skipped by Europe/Brussels's daylight-saving change \(clocks go "
        r"forward\)': 1 rows, e.g. row 7: '2018-03-25 02:30:00'",
        exit_code=0,
        source={"timezone": "Europe/Brussels"},
        quarantined={
            "7": "tx_datetime skipped by Europe/Brussels's daylight-saving change "
            "(clocks go forward)"
        },
    ),
    Case(
        "local-time-passed-twice",  # 02:30 happened twice in Brussels on 2018-10-28
        _replace({7: _field(7, "tx_datetime", "2018-10-28 02:30:00")}),
        r"rule 'tx_datetime ambiguous in Europe/Brussels: clocks go back and pass it twice "
        r"\(add the UTC offset to the export\)': 1 rows",
        exit_code=0,
        source={"timezone": "Europe/Brussels"},
        quarantined={
            "7": "tx_datetime ambiguous in Europe/Brussels: clocks go back and pass it "
            "twice (add the UTC offset to the export)"
        },
    ),
    Case(
        "missing-customer",
        _replace({9: _field(9, "customer_id", "")}),
        r"rule 'null customer_id': 1 rows, e.g. row 9: empty",
        exit_code=0,
        quarantined={"9": "null customer_id"},
    ),
    Case(
        "missing-transaction-id",
        _replace({9: _field(9, "transaction_id", "")}),
        "null transaction_id",
        exit_code=0,
        quarantined={"": "null transaction_id"},
    ),
    Case(
        "label-not-0-or-1",
        _replace({11: _field(11, "tx_fraud", "7")}),
        "tx_fraud not 0/1",
        exit_code=0,
        quarantined={"11": "tx_fraud not 0/1"},
    ),
    Case(
        "unknown-label-word",
        _replace({11: _field(11, "tx_fraud", "maybe")}),
        r"unparseable tx_fraud': 1 rows, e.g. row 11: 'maybe'",
        exit_code=0,
        quarantined={"11": "unparseable tx_fraud"},
    ),
    Case(
        "several-rules-in-one-row",
        _replace({12: "12,2018-04-13 12:15:00,5,2,-3.00,2"}),
        "negative tx_amount",
        exit_code=0,
        quarantined={"12": "negative tx_amount; tx_fraud not 0/1"},
    ),
    Case(
        "id-repeated-with-different-content",
        _csv([*_good_rows(), _field(5, "tx_amount", "999.00")]),
        r"transaction_id repeated with different content': 2 rows, e.g. row 5: '5', row 41: '5'",
        exit_code=0,
        quarantined={"5": "transaction_id repeated with different content"},
    ),
    Case(
        "exact-duplicate-rows",
        _csv([*_good_rows(), _good_rows()[4], _good_rows()[4]]),
        "kept 40 of 42 rows",
        exit_code=0,
        duplicates=2,
    ),
    # --- ids are exact integers: nothing retyped, rounded or merged (SPEC section 10) ---
    Case(
        "mixed-terminal-id",  # one text value among integers: that row, not the column, goes
        _replace({3: _field(3, "terminal_id", "T-3")}),
        r"rule 'terminal_id not an integer': 1 rows, e.g. row 3: 'T-3'",
        exit_code=0,
        quarantined={"3": "terminal_id not an integer"},
    ),
    Case(
        "id-above-uint64",
        _replace({4: _field(4, "customer_id", "18446744073709551616")}),
        r"'customer_id outside the int64 range': 1 rows, e.g. row 4: '18446744073709551616'",
        exit_code=0,
        quarantined={"4": "customer_id outside the int64 range"},
    ),
    Case(
        "id-with-leading-zeros",  # "007" and "7" must not become one card
        _replace({4: _field(4, "customer_id", "007")}),
        r"'customer_id with leading zeros': 1 rows, e.g. row 4: '007'",
        exit_code=0,
        quarantined={"4": "customer_id with leading zeros"},
    ),
    Case(
        "transaction-id-with-decimals",
        _replace({4: _field(4, "transaction_id", "4.0")}),
        r"'transaction_id not an integer': 1 rows, e.g. row 4: '4.0'",
        exit_code=0,
        quarantined={"4.0": "transaction_id not an integer"},
    ),
    Case(
        "nul-byte-in-an-id",
        _replace({4: _field(4, "terminal_id", "4\x00")}),
        r"'terminal_id not an integer': 1 rows, e.g. row 4: '4\\x00'",
        exit_code=0,
        quarantined={"4": "terminal_id not an integer"},
    ),
    Case(
        "very-long-value",  # the message quotes 40 characters of it, not 100,000
        _replace({4: _field(4, "customer_id", "x" * 100_000)}),
        r"e.g. row 4: 'x{40}'\.\.\. \(100,000 characters\)\n",
        exit_code=0,
        quarantined={"4": "customer_id not an integer"},
    ),
    Case(
        "na-words-are-values-not-nulls",  # pandas would read "NA" and "null" as missing
        _replace({4: _field(4, "tx_fraud", "NA"), 5: _field(5, "customer_id", "null")}),
        r"'customer_id not an integer': 1 rows, e.g. row 5: 'null'.*"
        r"'unparseable tx_fraud': 1 rows, e.g. row 4: 'NA'",
        exit_code=0,
        quarantined={"4": "unparseable tx_fraud", "5": "customer_id not an integer"},
    ),
    # --- amounts: finite numbers, as written ---
    *(
        Case(
            f"amount-{written}",
            _replace({4: _field(4, "tx_amount", written)}),
            "non-finite tx_amount",
            exit_code=0,
            quarantined={"4": reason},
        )
        for written, reason in (
            ("inf", "non-finite tx_amount"),
            ("-inf", "negative tx_amount; non-finite tx_amount"),
            ("nan", "non-finite tx_amount"),
            ("1e999", "non-finite tx_amount"),
            ("Infinity", "non-finite tx_amount"),
        )
    ),
    Case(
        "thousands-separator",
        _replace({4: '4,2018-04-05 04:15:00,4,4,"1,234.50",0'}),
        r"'unparseable tx_amount': 1 rows, e.g. row 4: '1,234.50'",
        exit_code=0,
        quarantined={"4": "unparseable tx_amount"},
    ),
    Case(
        "currency-symbol",
        _replace({4: _field(4, "tx_amount", "$6.00")}),
        r"'unparseable tx_amount': 1 rows, e.g. row 4: '\$6.00'",
        exit_code=0,
        quarantined={"4": "unparseable tx_amount"},
    ),
    Case(
        "exponent-notation-is-a-number",
        _replace({4: _field(4, "tx_amount", "6e0")}),
        "kept 40 of 40 rows",
        exit_code=0,
    ),
    Case(
        "mixed-date-formats",  # 05/04/2018: May or April? never guessed
        _replace({4: _field(4, "tx_datetime", "05/04/2018 04:15")}),
        r"'unparseable tx_datetime': 1 rows, e.g. row 4: '05/04/2018 04:15'",
        exit_code=0,
        quarantined={"4": "unparseable tx_datetime"},
    ),
    # --- the shape of real exports ---
    Case(
        "crlf-line-endings",
        _csv(_good_rows()).replace(b"\n", b"\r\n"),
        "kept 40 of 40 rows",
        exit_code=0,
    ),
    Case("utf-8-byte-order-mark", b"\xef\xbb\xbf" + _csv(_good_rows()), "kept 40 of 40 rows", 0),
    Case(
        "blank-lines-at-the-end", _csv(_good_rows()) + b"\n\n\n", "kept 40 of 40 rows", exit_code=0
    ),
    Case(
        "re-exported-duplicates-folded",  # the same rows written again: 4.500, a T, +0 offset
        _csv(
            [
                *_good_rows(),
                _good_rows()[2].replace("4.50", "4.500"),
                _good_rows()[3].replace(" ", "T"),
                _good_rows()[5].replace(":00,", ":00+00:00,", 1),
            ]
        ),
        r"kept 40 of 43 rows; quarantined 0 \(none\); dropped 0 exact duplicates; folded 3 "
        r"re-exported copies",
        exit_code=0,
        folded=3,
    ),
    Case(
        "rejected-row-keeps-the-amount-as-given",
        _replace({9: _field(9, "tx_amount", "-111.590")}),
        r"rule 'negative tx_amount': 1 rows, e.g. row 9: '-111.590' \(read as -111.59\)",
        exit_code=0,
        quarantined={"9": "negative tx_amount"},
        amounts_given={"9": "-111.590"},
    ),
    Case(
        "header-repeated-mid-file",  # e.g. two exports concatenated: that line is quarantined
        _csv([*_good_rows()[:20], HEADER, *_good_rows()[20:]]),
        r"'transaction_id not an integer': 1 rows, e.g. row 21: 'transaction_id'",
        exit_code=0,
        contract={"max_rejected_share": 0.05},
        quarantined={
            "transaction_id": "transaction_id not an integer; unparseable tx_datetime; "
            "customer_id not an integer; terminal_id not an integer; unparseable tx_amount; "
            "unparseable tx_fraud"
        },
    ),
]


def _params(tmp_path: Path, case: Case, raw: Path) -> Path:
    source = source_params(path=str(raw), **case.source)
    contract = contract_params(**({"max_rejected_share": 0.1} | case.contract))
    params = tmp_path / "params.yaml"
    params.write_text(
        f"validate: {contract.model_dump_json()}\nsource: {source.model_dump_json()}\n"
        + STORAGE_YAML
    )
    return params


@pytest.mark.parametrize("case", FILE_LEVEL + ROW_LEVEL, ids=lambda c: c.id)
def test_bad_input(tmp_path, caplog, case):
    raw = tmp_path / case.name
    if case.content is not None:
        raw.write_bytes(case.content)
    outputs = {
        name: tmp_path / "out" / name for name in ("clean.parquet", "rej.parquet", "dq.json")
    }
    argv = ["--params", str(_params(tmp_path, case, raw))]
    argv += ["--clean", str(outputs["clean.parquet"]), "--rejected", str(outputs["rej.parquet"])]
    argv += ["--report", str(outputs["dq.json"])]

    code = run_stage(validate, argv, caplog)

    assert code == case.exit_code, caplog.text
    assert re.search(case.message, caplog.text, flags=re.DOTALL), caplog.text
    if case.content is not None:
        assert raw.read_bytes() == case.content  # the source is only read
    if code != 0:
        assert str(raw) in caplog.text  # the message names the file
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        return
    clean = pd.read_parquet(outputs["clean.parquet"])
    rejected = pd.read_parquet(outputs["rej.parquet"])
    report = json.loads(outputs["dq.json"].read_text())
    ids = rejected["transaction_id"].astype("string").fillna("")
    assert dict(zip(ids, rejected["rejection_reason"], strict=True)) == case.quarantined
    assert report["rows_rejected"] == len(rejected)
    assert report["exact_duplicates_dropped"] == case.duplicates
    assert report["reexports_folded"] == case.folded
    assert report["rows_read"] == (
        report["rows_kept"] + len(rejected) + case.duplicates + case.folded
    )
    given = dict(zip(ids, rejected["tx_amount"].astype("string"), strict=True))
    assert {tx: given[tx] for tx in case.amounts_given} == case.amounts_given
    assert len(clean) == report["rows_kept"]
    for column in ("transaction_id", "customer_id", "terminal_id"):  # never retyped
        assert clean[column].dtype == "int64", column
    # Quarantined rows keep their position in the source and the values as given.
    lines = case.content.decode().splitlines()
    for tx_id, row in zip(ids, rejected["source_row"], strict=True):
        assert lines[row].split(",")[0] == tx_id


def _stage_on(tmp_path: Path, caplog, raw: Path, **source) -> tuple[int, Path]:
    out = tmp_path / "out"
    argv = ["--params", str(_params(tmp_path, Case("x", None, "", source=source), raw))]
    argv += ["--clean", str(out / "c.parquet"), "--rejected", str(out / "r.parquet")]
    argv += ["--report", str(out / "dq.json")]
    return run_stage(validate, argv, caplog), out


HOSTILE_NAMES = [
    "tx with spaces.csv",
    "tx_$(touch PWNED).csv",
    "tx_`touch PWNED`.csv",
    "a.csv; touch PWNED; b.csv",
    "tx_'quoted\" name.csv",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_file_name_is_read_and_runs_nothing(tmp_path, caplog, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / name
    raw.write_bytes(_csv(_good_rows()))

    code, out = _stage_on(tmp_path, caplog, raw)

    assert code == 0, caplog.text
    assert len(pd.read_parquet(out / "c.parquet")) == N_ROWS
    assert not list(tmp_path.glob("PWNED*"))


def test_huge_integer_ids_with_one_empty_cell_are_never_merged(tmp_path, caplog):
    """A CSV reader reads an integer column with an empty cell as float64: ids above 2^53 then
    lose digits and distinct customers merge. Read exactly, each id stays itself."""
    base = 2**62 + 1  # 4611686018427387905: not representable in float64
    rows = [
        f"{i},2018-04-{1 + i % 28:02d} 10:15:00,{base + i},{i % 5},{i * 1.5:.2f},{int(i % 5 == 0)}"
        for i in range(1, N_ROWS + 1)
    ]
    rows[3] = "4,2018-04-05 10:15:00,,4,6.00,0"
    raw = tmp_path / "tx.csv"
    raw.write_bytes(_csv(rows))

    code, out = _stage_on(tmp_path, caplog, raw)

    assert code == 0, caplog.text
    clean = pd.read_parquet(out / "c.parquet")
    assert clean["customer_id"].dtype == "int64"
    assert sorted(clean["customer_id"]) == [base + i for i in range(1, N_ROWS + 1) if i != 4]
    rejected = pd.read_parquet(out / "r.parquet")
    assert rejected["rejection_reason"].tolist() == ["null customer_id"]


def test_text_ids_are_kept_exactly_as_given(tmp_path, caplog):
    rows = [r.split(",") for r in _good_rows()]
    for i, row in enumerate(rows):
        row[2], row[3] = f"C-{i % 7:03d}", f"0{i % 5}"  # tokens and zero-padded codes
    raw = tmp_path / "tx.csv"
    raw.write_bytes(_csv([",".join(r) for r in rows]))

    code, out = _stage_on(tmp_path, caplog, raw, text_ids=["customer_id", "terminal_id"])

    assert code == 0, caplog.text
    clean = pd.read_parquet(out / "c.parquet").sort_values("transaction_id")
    assert clean["customer_id"].tolist() == [f"C-{i % 7:03d}" for i in range(N_ROWS)]
    assert clean["terminal_id"].tolist() == [f"0{i % 5}" for i in range(N_ROWS)]
    assert clean["transaction_id"].dtype == "int64"


def test_zero_padded_ids_without_text_ids_fail_with_the_hint(tmp_path, caplog):
    rows = [r.split(",") for r in _good_rows()]
    for row in rows:
        row[3] = f"0{row[3]}"
    raw = tmp_path / "tx.csv"
    raw.write_bytes(_csv([",".join(r) for r in rows]))

    code, _ = _stage_on(tmp_path, caplog, raw)

    assert code == 1
    assert "'terminal_id with leading zeros': 40 rows" in caplog.text
    assert "list them in source.text_ids" in caplog.text


# --- Parquet dataset directories: every part read with its own schema and parsed alike ------


def _frame() -> pd.DataFrame:
    return pd.read_csv(pd.io.common.BytesIO(_csv(_good_rows())))


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = pd.io.common.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _halves(second: Callable[[pd.DataFrame], pd.DataFrame] = lambda f: f) -> dict[str, bytes]:
    """The good rows in two parts, the second changed by ``second``."""
    frame = _frame()
    return {"part-0.parquet": _parquet(frame[:20]), "part-1.parquet": _parquet(second(frame[20:]))}


def _amounts_as_text(frame: pd.DataFrame, odd: dict[int, str] | None = None) -> pd.DataFrame:
    text = frame["tx_amount"].map(lambda v: f"{v:.3f}")  # '1.500': another writer's export
    for tx_id, value in (odd or {}).items():
        text[frame["transaction_id"] == tx_id] = value
    return frame.assign(tx_amount=text)


@dataclass(frozen=True)
class DatasetCase:
    id: str
    parts: dict[str, bytes]  # relative path -> content
    message: str
    exit_code: int = 1
    quarantined: dict[str, str] = field(default_factory=dict)


DATASETS = [
    DatasetCase(
        "parts-disagree-on-a-type-and-a-value-does-not-parse",  # Arrow would stop on '16,73'
        _halves(lambda f: _amounts_as_text(f, {23: "16,73"})),
        "kept 39 of 40 rows",
        exit_code=0,
        quarantined={"23": "unparseable tx_amount"},
    ),
    DatasetCase(
        "parts-disagree-on-a-type-and-every-value-parses",
        _halves(_amounts_as_text),
        "kept 40 of 40 rows",
        exit_code=0,
    ),
    DatasetCase(
        "a-part-that-cannot-be-read",
        {**_halves(), "part-2.parquet": _garbage_parquet()},
        r"part part-2\.parquet: not a readable parquet file",
    ),
    DatasetCase(
        "a-part-that-is-not-parquet",
        {**_halves(), "notes.csv": _csv(_good_rows())},
        r"part notes\.csv is not a Parquet file: a dataset directory holds Parquet parts only",
    ),
    DatasetCase(
        "a-part-without-a-column",
        _halves(lambda f: f.drop(columns=["tx_fraud"])),
        r"part part-1\.parquet lacks column\(s\) \['tx_fraud'\] that the first part has",
    ),
    DatasetCase(
        "bookkeeping-files-and-sub-directories",  # Spark's _SUCCESS, a date=... directory
        {
            "_SUCCESS": b"",
            "date=1/part-0.parquet": _halves()["part-0.parquet"],
            "date=2/part-0.parquet": _halves()["part-1.parquet"],
        },
        "kept 40 of 40 rows",
        exit_code=0,
    ),
]


@pytest.mark.parametrize("case", DATASETS, ids=lambda c: c.id)
@pytest.mark.parametrize("name", ["export", "transactions.parquet"])
@pytest.mark.parametrize("partitions", ["", "3"], ids=["whole", "3-partitions"])
def test_bad_dataset(tmp_path, caplog, monkeypatch, case, name, partitions):
    """A directory source, whatever its name, checked whole and in partitions."""
    monkeypatch.setenv(PARTITIONS_VAR, partitions)
    raw = tmp_path / name
    for relative, content in case.parts.items():
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        (raw / relative).write_bytes(content)

    code, out = _stage_on(tmp_path, caplog, raw)

    assert code == case.exit_code, caplog.text
    assert re.search(case.message, caplog.text), caplog.text
    if code != 0:
        assert f"{raw}: " in caplog.text
        assert not out.exists() or not any(out.iterdir())
        return
    rejected = pd.read_parquet(out / "r.parquet")
    ids = rejected["transaction_id"].astype("string")
    assert dict(zip(ids, rejected["rejection_reason"], strict=True)) == case.quarantined
    clean = pd.read_parquet(out / "c.parquet")
    assert clean["tx_amount"].dtype == "float64"
    assert sorted(clean["transaction_id"]) == [
        i for i in range(1, 41) if str(i) not in ids.tolist()
    ]
