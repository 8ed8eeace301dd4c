"""The scoring service on an operator's bad day and against a hostile client: wrong clocks,
lost, read-only or full stores, oversized headers and slow clients. Each case runs a real
server process and speaks to it over HTTP (raw sockets where http.client would not send what a
hostile client does), then checks that the store is intact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from helpers import Server, refused_start
from test_service import (  # noqa: F401 (fixtures)
    KEY,
    batch,
    deployment,
    features_params_module,
    server_args,
)

pytestmark = pytest.mark.slow  # real server processes over HTTP

ENV = {"FRAUDLAB_API_KEYS": KEY}


def _rows(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT count(*) FROM history").fetchone()[0]


def _tx(tx_id: int, when: pd.Timestamp, *, customer: int = 3, amount: float = 12.5) -> dict:
    return {
        "transaction_id": 10**12 + tx_id,  # beyond the simulated ids
        "tx_datetime": when.isoformat(),
        "customer_id": customer,
        "terminal_id": 5,
        "tx_amount": amount,
    }


@pytest.fixture
def seeded(deployment, tmp_path):  # noqa: F811 (the imported fixture)
    """A server on a copy of a store seeded with 30 days of simulated data (the data clock)."""
    root = deployment["root"]
    store = tmp_path / "seeded.db"
    args = server_args(root, str(store), "--history", str(root / "history.parquet"))
    with Server([*args, "--max-ahead", "1h"], env=ENV) as running:
        running.store = store
        yield running


def test_one_wrongly_dated_transaction_neither_erases_nor_is_dropped(seeded, deployment):  # noqa: F811
    """Dated years ahead it would have moved the pruning horizon past every row; dated before
    the retention it would have been acknowledged and deleted in the same commit. Both are
    refused naming the accepted window, and the history is whole afterwards."""
    with sqlite3.connect(seeded.store) as db:
        newest = pd.Timestamp(db.execute("SELECT max(time) FROM history").fetchone()[0])
        card, count = db.execute(
            "SELECT customer_id, count(*) FROM history WHERE time > ? GROUP BY customer_id "
            "ORDER BY 2 DESC LIMIT 1",
            ((newest - pd.Timedelta(days=1)).value,),
        ).fetchone()
    before = _rows(seeded.store)
    for when, side in ((pd.Timestamp("2026-12-07T10:00"), "later"),
                       (pd.Timestamp("2001-01-01"), "older")):  # fmt: skip
        status, answer = seeded.request("POST", "/v1/score", _tx(1, when), key=KEY)
        assert status == 422, answer
        assert f"is {side} than the accepted window" in answer["error"]
        assert (newest - pd.Timedelta(days=1)).isoformat() in answer["error"]
        assert (newest + pd.Timedelta(hours=1)).isoformat() in answer["error"]
    assert _rows(seeded.store) == before
    # the busiest card of the last day is still scored with its whole day
    status, answer = seeded.request(
        "POST", "/v1/score", _tx(2, newest + pd.Timedelta(minutes=1), customer=card), key=KEY
    )
    assert status == 200, answer
    assert answer["features"]["customer_id_nb_tx_1day_window"] == count + 1
    assert _rows(seeded.store) == before + 1


def test_every_2xx_is_stored_idempotent_and_labellable(seeded):
    """The latest accepted and the oldest accepted transaction: each is in the store, the same
    body gets the same answer, another body a 409, and a label is recorded."""
    with sqlite3.connect(seeded.store) as db:
        newest = pd.Timestamp(db.execute("SELECT max(time) FROM history").fetchone()[0])
    edges = {
        11: newest + pd.Timedelta(hours=1),  # as far ahead as --max-ahead allows
        12: newest + pd.Timedelta(hours=1) - pd.Timedelta(days=1),  # as late as --max-late
    }
    for tx_id, when in edges.items():
        status, answer = seeded.request("POST", "/v1/score", _tx(tx_id, when), key=KEY)
        assert status == 200, answer
        assert seeded.request("POST", "/v1/score", _tx(tx_id, when), key=KEY) == (200, answer)
        status, conflict = seeded.request(
            "POST", "/v1/score", _tx(tx_id, when, amount=99.0), key=KEY
        )
        assert status == 409, conflict
        labels = {"labels": [{"transaction_id": 10**12 + tx_id, "tx_fraud": 1}]}
        assert seeded.request("POST", "/v1/labels", labels, key=KEY)[0] == 200
    with sqlite3.connect(seeded.store) as db:
        stored = db.execute("SELECT count(*) FROM history WHERE fraud = 1 AND transaction_id "
                            "IN (?, ?)", (10**12 + 11, 10**12 + 12)).fetchone()  # fmt: skip
    assert stored == (2,)


def _live(args: list[str]) -> list[str]:
    """``args`` with the service's default clock (this machine's) and accepted window."""
    at = args.index("--clock")
    assert args[at : at + 4] == ["--clock", "data", "--max-ahead", "1 day"]
    return args[:at] + args[at + 4 :]


def test_the_system_clock_refuses_a_store_it_would_empty(deployment, tmp_path):  # noqa: F811
    """A store of 2018 served with this machine's clock would be pruned whole: the start is
    refused in one line that names the setting for replays."""
    root = deployment["root"]
    args = _live(server_args(root, str(tmp_path / "old.db"), "--history",
                             str(root / "history.parquet")))  # fmt: skip
    status, log = refused_start(args, env=ENV)
    assert status == 1
    assert "is older than the retention" in log
    assert "to replay past data pass --clock data" in log
    assert "Traceback" not in log
    assert _rows(tmp_path / "old.db") > 0  # seeded, and nothing pruned


def test_the_system_clock_accepts_minutes_ahead_and_a_day_behind(deployment, tmp_path):  # noqa: F811
    root = deployment["root"]
    args = _live(server_args(root, str(tmp_path / "live.db"), "--create-store"))
    now = pd.Timestamp.now("UTC").tz_localize(None)
    with Server(args, env=ENV) as running:
        cases = [
            (now + pd.Timedelta(minutes=10), 422, "later than the accepted window"),
            (now - pd.Timedelta(days=1, minutes=10), 422, "older than the accepted window"),
            (now + pd.Timedelta(minutes=3), 200, ""),
            (now - pd.Timedelta(hours=23), 200, ""),
        ]
        for tx_id, (when, status, words) in enumerate(cases, start=1):
            got, answer = running.request("POST", "/v1/score", _tx(tx_id, when), key=KEY)
            assert got == status, answer
            assert words in answer.get("error", "")
    assert _rows(tmp_path / "live.db") == 2
