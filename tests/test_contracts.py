"""One battery of values through both contracts: the batch data contract (a CSV's text, the
validate stage's parsing and rules) and the service's request contract (JSON). A value one
refuses the other refuses too, except the service's own limits, listed below with the reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pydantic import TypeAdapter

from conftest import contract_params, source_params
from fraudlab.data.validate import check_rows
from fraudlab.serving.app import RequestError, Settings, parse_body, request_models

GOOD = {
    "transaction_id": "1",
    "tx_datetime": "2018-04-01T10:00:00",
    "customer_id": "5",
    "terminal_id": "7",
    "tx_amount": "10.5",
}
# (column, value as a CSV holds it, accepted?) -- the answer both contracts must give
BATTERY = [
    ("transaction_id", "-1", True),
    ("transaction_id", "4.0", False),
    ("transaction_id", "T-3", False),
    ("transaction_id", str(2**63), False),
    ("transaction_id", "007", False),
    ("transaction_id", "", False),
    ("customer_id", "-5", True),
    ("customer_id", "4.0", False),
    ("customer_id", "", False),
    ("terminal_id", "1e3", False),
    ("tx_amount", "-1", False),
    ("tx_amount", "abc", False),
    ("tx_amount", "nan", False),
    ("tx_amount", "inf", False),
    ("tx_amount", "1e999", False),
    ("tx_amount", "1,000", False),
    ("tx_amount", "", False),
    ("tx_amount", "1e3", True),
    ("tx_amount", "1e-400", False),  # not 0: too small for float64, never read as 0
    ("tx_amount", "0.0e-400", True),
    ("tx_amount", "0", True),
    ("tx_datetime", "2018-13-01", False),
    ("tx_datetime", "abc", False),
    ("tx_datetime", "", False),
    ("tx_datetime", "2018-04-01X10:00:00", False),
    ("tx_datetime", "2018-04-01T10:00:00\x00", False),
    ("tx_datetime", "0001-01-01T00:00:00+23:59", False),
    ("tx_datetime", "9999-12-31T23:59:59-23:59", False),
    ("tx_datetime", "2018-04-01T10:00:00.1234567891", False),  # finer than ns: never rounded
    ("tx_datetime", "2018-04-01T10:00:00.123456789", True),
    ("tx_datetime", "2018-04-01 10:00:00", True),
    ("tx_datetime", "2018-04-01T10:00:00Z", True),
    ("tx_datetime", "2018-04-01T10:00:00+02:00", True),
    ("tx_datetime", "2018-04-01", True),
]
# Where the service is stricter on purpose: limits of a live request, set by `fraudlab serve`
# options (the batch has its own, validate.earliest_date..latest_date, checked elsewhere). Whether
# a time is inside the service's accepted window depends on its clock and store: test_scoring.
SERVICE_ONLY = [
    ("tx_amount", "1e10", "--max-amount (1e9): an absurd amount from a live client"),
]


def _batch_accepts(column: str, value: str) -> bool:
    row = GOOD | {"transaction_id": "2", "tx_fraud": "0", column: value}
    frame = pd.DataFrame([GOOD | {"tx_fraud": "0"}, row], dtype=object)
    params = contract_params(max_rejected_share=1.0)
    checked = check_rows(frame, params, source=source_params())
    return len(checked.rejected) == 0


def _as_json(column: str, value: str) -> str:
    """The value as a client writes it in JSON: ids and amounts as the number literal given
    where it is one (1e999 and 1e-400 kept as written), anything else as a string, times always
    as strings."""
    if column != "tx_datetime":
        try:
            json.loads(value)
        except ValueError:
            pass
        else:
            return value
    return json.dumps(value)


def _service_status(column: str, value: str) -> int:
    """200 when the request contract takes the transaction, else the status it answers."""
    row = GOOD | {"transaction_id": "2", column: value}
    body = ("{" + ",".join(f"{json.dumps(key)}: {_as_json(key, text)}"
                           for key, text in row.items()) + "}").encode()  # fmt: skip
    adapter = TypeAdapter(request_models(Settings())["score"])
    try:
        parse_body(body, adapter=adapter, content_type="application/json")
    except RequestError as refused:
        return refused.status
    return 200


@pytest.mark.parametrize(("column", "value", "accepted"), BATTERY)
def test_the_batch_and_the_service_agree(column, value, accepted):
    assert _batch_accepts(column, value) is accepted, "batch"
    assert _service_status(column, value) == (200 if accepted else 422), "service"


@pytest.mark.parametrize(("column", "value", "why"), SERVICE_ONLY)
def test_the_service_is_stricter_only_where_it_says_why(column, value, why):
    assert _batch_accepts(column, value)
    assert _service_status(column, value) == 422, why
