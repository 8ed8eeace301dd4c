"""The scoring service on an operator's bad day and against a hostile client: wrong clocks,
lost, read-only or full stores, oversized headers and slow clients. Each case runs a real
server process and speaks to it over HTTP (raw sockets where http.client would not send what a
hostile client does), then checks that the store is intact."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import joblib
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.integrity.lock import file_md5
from fraudlab.modeling.artifact import model_artifact
from fraudlab.modeling.pipeline import fit_pipeline
from helpers import Server, refused_start
from test_service import (  # noqa: F401 (fixtures)
    DAY,
    KEY,
    PARAMS,
    batch,
    deployment,
    features_params_module,
    server_args,
    write_lock,
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


# --- bounded requests: raw sockets, as a hostile or broken client sends them

BOUNDS = ["--header-timeout", "2", "--idle-timeout", "1", "--body-timeout", "3",
          "--keep-alive-timeout", "1", "--max-header-bytes", "8192", "--max-headers", "20",
          "--max-requests-per-connection", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def bounded(deployment, tmp_path_factory):  # noqa: F811
    store = tmp_path_factory.mktemp("bounded") / "bounded.db"
    args = server_args(deployment["root"], str(store), "--create-store", *BOUNDS)
    with Server(args, env=ENV) as running:
        running.store = store
        yield running


def _address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _answer_of(connection: socket.socket) -> tuple[int | None, float]:
    """The status the server answers on ``connection`` (None: closed without one) and when."""
    started = time.monotonic()
    connection.settimeout(30)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        return -1, time.monotonic() - started  # a reset: the answer was lost
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - started


def _head(*lines: str) -> bytes:
    return ("\r\n".join(["GET /healthz HTTP/1.1", "Host: x", *lines]) + "\r\n\r\n").encode()


def _score_head(length: int, *extra: str) -> bytes:
    lines = ["POST /v1/score HTTP/1.1", "Host: x", f"Authorization: Bearer {KEY}",
             "Content-Type: application/json", f"Content-Length: {length}", *extra]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked_head() -> bytes:
    return _score_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")


def _counted(server, status: int) -> float:
    status_code, text = server.request("GET", "/metrics", key=KEY)
    assert status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fraudlab_requests_total" and sample.labels["status"] == str(status)
    )


def test_an_oversized_head_is_a_431_at_once_without_parsing_it(bounded):
    """A 64 MiB header and a head of 500 lines: 431 while the client is still sending, read
    by the client (no reset), and counted on /metrics; the service goes on."""
    before, rows = _counted(bounded, 431), _rows(bounded.store)
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 20)
    many = _head(*(f"X-{n}: 1" for n in range(500)))
    for payload in (huge, many):
        with socket.create_connection(_address(bounded)) as connection:
            sender = threading.Thread(target=_send_quietly, args=(connection, payload))
            sender.start()
            status, _ = _answer_of(connection)
            sender.join()
        assert status == 431
    assert _counted(bounded, 431) == before + 2
    assert bounded.request("GET", "/healthz")[0] == 200
    assert _rows(bounded.store) == rows


def _send_quietly(connection: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the server may close once it has answered
        connection.sendall(payload)


@pytest.mark.parametrize(
    ("why", "payload"),
    [
        ("head never finished", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        ("short body", _score_head(100) + b'{"transaction_id": '),
        ("chunked body never ended", _chunked_head() + b'10\r\n{"transaction_'),
    ],
)
def test_a_half_sent_request_gets_a_408_within_its_deadline(bounded, why, payload):
    before = _counted(bounded, 408)
    rows = _rows(bounded.store)
    with socket.create_connection(_address(bounded)) as connection:
        connection.sendall(payload)
        status, waited = _answer_of(connection)
    assert status == 408, why
    assert waited < 10  # the deadlines are 1 to 3 s; without them: held for minutes
    assert _counted(bounded, 408) == before + 1
    assert _rows(bounded.store) == rows


def test_a_connection_that_sends_nothing_is_closed(bounded):
    with socket.create_connection(_address(bounded)) as connection:
        status, waited = _answer_of(connection)
    assert status is None
    assert waited < 10


def test_an_oversized_body_sent_whole_still_reads_its_413(bounded):
    """No Expect: 100-continue and Connection: close: the server answers before the body is
    read, then drains it (a lingering close) instead of resetting the connection."""
    body = b"x" * (20 << 20)
    with socket.create_connection(_address(bounded)) as connection:
        sender = threading.Thread(
            target=_send_quietly,
            args=(connection, _score_head(len(body), "Connection: close") + body),
        )
        sender.start()
        status, _ = _answer_of(connection)
        sender.join()
    assert status == 413


def test_a_connection_serves_a_bounded_number_of_requests(bounded):
    with socket.create_connection(_address(bounded)) as connection:
        connection.sendall(_head() * 4)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 3  # --max-requests-per-connection 3
    assert data.count(b"connection: close") == 1


def test_slow_clients_cannot_take_every_descriptor(deployment, tmp_path):  # noqa: F811
    """256 file descriptors and 300 half-sent requests: past --max-connections the newest get a
    503 at once, the others a 408 at their deadline, and a normal client is served again as
    soon as they are gone; the server never runs out of descriptors."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    args = server_args(deployment["root"], str(tmp_path / "fd.db"), "--create-store", *BOUNDS)
    status, log = refused_start(args, env=ENV, preexec_fn=limited)
    assert status == 1
    assert "--max-connections 1000 needs 1064 file descriptors per worker" in log
    with Server([*args, "--max-connections", "150"], env=ENV, preexec_fn=limited) as running:
        slow = [socket.create_connection(_address(running)) for _ in range(300)]
        for connection in slow:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answers = collections.Counter(_answer_of(connection)[0] for connection in slow)
        for connection in slow:
            connection.close()
        assert answers[503] >= 150 - 5  # minus what the other tests' clients hold
        assert answers[408] + answers[503] == 300
        assert running.request("GET", "/healthz")[0] == 200
        status, answer = running.request("POST", "/v1/score", _tx(1, pd.Timestamp("2018-06-01")),
                                         key=KEY)  # fmt: skip
        assert status == 200, answer
    assert "Too many open files" not in "".join(running.log)


# --- the store's health: deleted, replaced, read-only, full


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs of the test's own (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        if os.environ.get("FRAUDLAB_REQUIRE_MOUNTS"):
            pytest.fail(f"cannot mount a tmpfs ({done.stderr.strip()}) and CI requires it")
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    """Fill the file system to the last byte; the filler file."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 16, 1):  # big blocks, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def _incidents(server) -> int:
    return sum("cannot take writes" in line for line in server.log)


def _until(condition, *, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _store_server(deployment, store: Path, *extra: str) -> Server:  # noqa: F811
    args = server_args(deployment["root"], str(store), "--create-store", *extra)
    return Server(args, env=ENV)


def _post(server, tx_id: int, acknowledged: dict) -> int:
    tx = _tx(tx_id, pd.Timestamp("2018-06-01T10:00") + pd.Timedelta(seconds=tx_id))
    status, answer = server.request("POST", "/v1/score", tx, key=KEY)
    if status == 200:
        acknowledged[tx["transaction_id"]] = answer
    return status


def _faulty(server, kind: str, acknowledged: dict) -> None:
    """While a fault lasts: every write a 503 naming it, at once, readiness failing, liveness
    not, and one log line for the incident."""
    statuses = [_post(server, n, acknowledged) for n in range(2, 12)]
    assert set(statuses) == {503}, statuses
    tx = _tx(99, pd.Timestamp("2018-06-01"))
    status, answer = server.request("POST", "/v1/score", tx, key=KEY)
    assert (status, answer["error"].split(": ")[1]) == (503, kind), answer
    labels = {"labels": [{"transaction_id": 10**12 + 1, "tx_fraud": 1}]}
    assert server.request("POST", "/v1/labels", labels, key=KEY)[0] == 503
    assert server.request("GET", "/readyz") == (503, {"status": "not ready", "store": kind})
    assert server.request("GET", "/healthz")[0] == 200
    assert _incidents(server) == 1  # logged once, not per request
    assert "Traceback" not in "".join(server.log)


def _stored_answers(store: Path) -> dict:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT transaction_id, answer FROM history").fetchall()
    return {tx_id: json.loads(answer) for tx_id, answer in rows if answer}


@pytest.mark.parametrize("fault", ["read-only file", "disk full", "disk full, no reserve"])
def test_a_read_only_or_full_store_is_a_503_then_recovers_by_itself(
    deployment,  # noqa: F811
    small_disk,
    fault,
):
    store = small_disk / "history.db"
    reserve = ["--store-reserve-bytes", "0" if "no reserve" in fault else "1048576"]
    acknowledged: dict[int, dict] = {}
    with _store_server(deployment, store, *reserve) as running:
        assert _post(running, 1, acknowledged) == 200
        if fault == "read-only file":
            subprocess.run(["chattr", "+i", str(store)], check=True)  # even root cannot write
        else:
            filler = _fill(small_disk)
        _faulty(running, "read-only" if "read-only" in fault else "disk full", acknowledged)
        if fault == "read-only file":
            subprocess.run(["chattr", "-i", str(store)], check=True)
        else:
            filler.unlink()
        assert _until(lambda: running.request("GET", "/readyz")[0] == 200)
        assert _until(lambda: _post(running, 20, acknowledged) == 200)
        assert any("takes writes again" in line for line in running.log)
    assert len(acknowledged) == 2
    assert {tx_id: _stored_answers(store)[tx_id] for tx_id in acknowledged} == acknowledged


@pytest.fixture
def ext4_disk(tmp_path):
    """A small ext4 file system on a loop device, mounted errors=remount-ro (needs root)."""
    image, mount = tmp_path / "disk.img", tmp_path / "ext4"
    mount.mkdir()
    with open(image, "wb") as out:
        out.truncate(32 << 20)
    for command in (["mkfs.ext4", "-q", str(image)],
                    ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)]):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"{command[0]} failed here ({done.stderr.strip()}): needs root")
    yield mount, image
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_file_system_turned_read_only_under_the_service_is_a_503(deployment, ext4_disk):  # noqa: F811
    """A disk error remounts ext4 read-only under the running service (the kernel's
    errors=remount-ro, triggered by hand): writes fail, the service says read-only; nothing it
    acknowledged is lost (with --fsync: an aborted file system drops what was only in the page
    cache, as a power cut does). It cannot recover by itself: the mount must be repaired."""
    mount, image = ext4_disk
    store = mount / "history.db"
    acknowledged: dict[int, dict] = {}
    reserve = ["--store-reserve-bytes", "1048576"]
    with _store_server(deployment, store, "--fsync", *reserve) as running:
        assert _post(running, 1, acknowledged) == 200
        (device,) = [line.split()[0] for line in Path("/proc/self/mounts").read_text().splitlines()
                     if line.split()[1] == str(mount)]  # fmt: skip
        device = Path(device)
        Path(f"/sys/fs/ext4/{device.name}/trigger_fs_error").write_text("1")
        _faulty(running, "read-only", acknowledged)
    subprocess.run(["umount", str(mount)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    assert {tx_id: _stored_answers(store)[tx_id] for tx_id in acknowledged} == acknowledged


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_deleted_or_replaced_store_is_a_503_until_restarted(deployment, tmp_path, fault):  # noqa: F811
    store = tmp_path / "history.db"
    acknowledged: dict[int, dict] = {}
    with _store_server(deployment, store) as running:
        assert _post(running, 1, acknowledged) == 200
        if fault == "deleted":
            for part in tmp_path.glob("history.db*"):
                part.unlink()
        else:
            copy = tmp_path / "copy.db"
            copy.write_bytes(store.read_bytes())
            copy.replace(store)
        assert _post(running, 2, acknowledged) == 503
        assert running.request("GET", "/readyz") == (503, {"status": "not ready", "store": fault})
        assert _post(running, 3, acknowledged) == 503
        assert _incidents(running) == 1
    assert list(acknowledged) == [10**12 + 1]


def test_a_store_that_cannot_take_writes_refuses_the_start_in_one_line(deployment, small_disk):  # noqa: F811
    root = deployment["root"]
    store = small_disk / "history.db"
    reserve = ["--store-reserve-bytes", "1048576"]
    with _store_server(deployment, store, *reserve):
        pass  # created
    _remount(small_disk, "ro")
    status, log = refused_start(server_args(root, str(store), *reserve), env=ENV)
    assert status == 1
    assert "cannot take writes: read-only: the store" in log
    assert "Traceback" not in log
    _remount(small_disk, "rw")
    store.unlink()
    _fill(small_disk)
    args = server_args(root, str(store), "--history", str(root / "history.parquet"),
                       "--store-reserve-bytes", "0")  # fmt: skip
    status, log = refused_start(args, env=ENV)
    assert status == 1
    assert "disk full" in log
    assert "Traceback" not in log


def test_a_label_flipped_is_kept_as_history_and_counted(bounded):
    acknowledged: dict[int, dict] = {}
    assert _post(bounded, 500, acknowledged) == 200
    (tx_id,) = acknowledged

    def changes(before: str, after: str) -> float:
        _, text = bounded.request("GET", "/metrics", key=KEY)
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "fraudlab_label_changes_total"
            and sample.labels == {"from_label": before, "to_label": after}
        )

    answers = [
        bounded.request("POST", "/v1/labels", {"labels": [{"transaction_id": tx_id,
                                                           "tx_fraud": fraud}]}, key=KEY)
        for fraud in (1, 0, 1)
    ]  # fmt: skip
    assert [answer for _, answer in answers] == [
        {"recorded": 1, "changed": 0},
        {"recorded": 1, "changed": 1},
        {"recorded": 1, "changed": 1},
    ]
    assert (changes("1", "0"), changes("0", "1")) == (1, 1)
    with sqlite3.connect(bounded.store) as db:
        log = db.execute("SELECT previous, fraud FROM label_log WHERE transaction_id = ? "
                         "ORDER BY seq", (tx_id,)).fetchall()  # fmt: skip
        latest = db.execute("SELECT fraud FROM history WHERE transaction_id = ?", (tx_id,))
        assert latest.fetchone() == (1,)
    assert log == [(None, 1), (1, 0), (0, 1)]
    assert sum("label changed from" in line for line in bounded.log) == 2


def test_a_model_changed_on_disk_is_reported_and_loaded_only_on_sighup(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    tmp_path,
):
    """The served model replaced on disk: still served, reported on /readyz and /metrics; SIGHUP
    with dvc.lock not matching it is refused; with dvc.lock recording it, it is loaded while a
    client keeps scoring, without a failed request."""
    root = tmp_path / "deployment"
    shutil.copytree(deployment["root"], root, ignore=shutil.ignore_patterns("*.db*"))
    args = server_args(root, "history.db", "--create-store")
    names = deployment["names"]
    old_md5 = file_md5(root / "models" / "model.joblib")
    with Server(args, env=ENV) as running:
        train = batch[batch[schema.TX_DATETIME] < batch[schema.TX_DATETIME].min() + 21 * DAY]
        params = load_params(PARAMS, "train")["train"]
        params = params.model_copy(
            update={"xgboost": params.xgboost.model_copy(update={"n_estimators": 12})}
        )
        features = load_params(PARAMS, "features")["features"]
        model = root / "models" / "model.joblib"
        joblib.dump(
            model_artifact(fit_pipeline(train, names, params=params), params=params,
                           features=features), model,
        )  # fmt: skip
        new_md5 = file_md5(model)
        assert _until(lambda: "changed_on_disk" in running.request("GET", "/readyz")[1])
        status, body = running.request("GET", "/readyz")
        assert (status, body["changed_on_disk"]) == (200, ["model.joblib"])
        assert _gauge(running, "fraudlab_served_file_changed", file="model.joblib") == 1
        acknowledged: dict[int, dict] = {}
        assert _post(running, 1, acknowledged) == 200
        assert acknowledged[10**12 + 1]["model_version"] == old_md5

        running.process.send_signal(signal.SIGHUP)  # dvc.lock still records the old model
        assert _until(lambda: any("reload refused" in line for line in running.log))
        assert "model.joblib: MD5" in "".join(running.log)
        assert _post(running, 2, acknowledged) == 200
        assert acknowledged[10**12 + 2]["model_version"] == old_md5

        serving = root / "models" / "serving.json"
        serving.write_text(json.dumps(json.loads(serving.read_text()) | {"model_md5": new_md5}))
        write_lock(root)  # as `dvc repro` would record them
        statuses: list[int] = []
        stop = threading.Event()

        def stream() -> None:
            n = 100
            while not stop.is_set():
                n += 1
                statuses.append(_post(running, n, acknowledged))

        client = threading.Thread(target=stream)
        client.start()
        running.process.send_signal(signal.SIGHUP)
        reloaded = _until(lambda: any("now serving model" in line for line in running.log))
        time.sleep(0.5)
        stop.set()
        client.join()
        assert reloaded
        assert statuses
        assert set(statuses) == {200}  # no request failed during the swap
        assert _post(running, 3, acknowledged) == 200
        assert acknowledged[10**12 + 3]["model_version"] == new_md5
        assert "changed_on_disk" not in running.request("GET", "/readyz")[1]
        assert _gauge(running, "fraudlab_served_file_changed", file="model.joblib") == 0


def _gauge(server, name: str, **labels: str) -> float:
    _, text = server.request("GET", "/metrics", key=KEY)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    )


def test_a_request_the_parser_refuses_is_a_400_counted_on_metrics(bounded):
    before = _counted(bounded, 400)
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"):
        with socket.create_connection(_address(bounded)) as connection:
            connection.sendall(garbage)
            status, _ = _answer_of(connection)
        assert status == 400
    assert _counted(bounded, 400) == before + 2


def test_a_store_from_a_newer_fraudlab_refuses_the_start_in_one_line(deployment, tmp_path):  # noqa: F811
    store = tmp_path / "future.db"
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA user_version = 99")
    status, log = refused_start(server_args(deployment["root"], str(store)), env=ENV)
    assert status == 1
    assert "its schema is version 99, written by a newer fraudlab" in log
    assert "Traceback" not in log
