"""How fast the scoring service answers on a bad day, at the reference size, after `dvc repro`.

Seeds a store with the clean data before the test period (about 890,000 rows) on a tmpfs of
its own, starts `fraudlab serve` (data clock), and times, each over HTTP on loopback:

* a normal `/v1/score` (the baseline);
* a transaction dated years ahead and one dated before the retention (422), and the store's
  row count before and after;
* a 64 MiB header (431) and a `/v1/score` sent while it arrives; a half-sent head (408 at the
  default deadline);
* each store fault: a read-only file (`chattr +i`), a full disk, a deleted file: the 503s of
  `/v1/score` (median and slowest of 20), `/readyz` and `/healthz` meanwhile, and for the first
  two how long after the cause is removed the service takes writes again;
* `--workers 2` on the same store while two processes keep both cores busy: the time until both
  workers serve, and how many the supervisor restarted;
* in process: the longest time loading the store holds the GIL (a worker's liveness check
  fails past 5 s).

Needs root (tmpfs, chattr). Run: `dvc repro && python bench/faults.py`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.serving.app import request_fields
from serve import test_period_start  # bench/serve.py

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"


class Service:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fraudlab", "serve", "--port", "0", "--clock", "data", *args],
            cwd=ROOT, env={**os.environ, "FRAUDLAB_API_KEYS": KEY}, stderr=self.log,
        )  # fmt: skip
        self.port = 0
        deadline = time.monotonic() + 600
        while not self.port:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}")
            for line in log.read_text().splitlines():
                if "listening on http://" in line:
                    self.port = int(line.rsplit(":", 1)[1].split()[0])
            time.sleep(0.1)

    def request(self, method: str, path: str, body: object = None) -> tuple[int, float]:
        """(status, seconds) of one request on a new connection."""
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status, time.perf_counter() - started

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.request("GET", "/readyz")[0] == 200
        return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def _ms(seconds: list[float] | float) -> str:
    values = np.atleast_1d(seconds) * 1e3
    if len(values) == 1:
        return f"{values[0]:.1f} ms"
    return f"median {np.median(values):.1f} ms, slowest {values.max():.1f} ms"


def _until(condition, *, seconds: float = 60.0) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > seconds:
            return float("nan")
        time.sleep(0.01)
    return time.perf_counter() - started


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def _rows(store: Path) -> int:
    done = subprocess.run([sys.executable, "-c", "import sqlite3,sys; print(sqlite3.connect("
                           "sys.argv[1]).execute('SELECT count(*) FROM history').fetchone()[0])",
                           str(store)], capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def faults(service: Service, store: Path, disk: Path, later: list[dict]) -> None:
    pending = iter(later)
    times = [service.request("POST", "/v1/score", next(pending))[1] for _ in range(20)]
    print(f"baseline /v1/score: {_ms(times)}")

    newest = pd.Timestamp(next(pending)["tx_datetime"])
    rows = _rows(store)
    for label, when in (("dated 2026", pd.Timestamp("2026-12-07T10:00")),
                        ("dated 2001", pd.Timestamp("2001-01-01"))):  # fmt: skip
        tx = next(pending) | {"tx_datetime": when.isoformat()}
        status, seconds = service.request("POST", "/v1/score", tx)
        print(f"a transaction {label}: {status} in {_ms(seconds)}")
    print(f"rows in the store: {rows:,} before, {_rows(store):,} after (newest {newest})")

    with socket.create_connection(("127.0.0.1", service.port)) as connection:
        started = time.perf_counter()
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 20)
        sender = threading.Thread(target=_send_quietly, args=(connection, huge))
        sender.start()
        during = service.request("POST", "/v1/score", next(pending))
        answer = connection.recv(64)
        print(f"a 64 MiB header: {answer.split(b' ')[1].decode()} in "
              f"{_ms(time.perf_counter() - started)}; a /v1/score meanwhile: {during[0]} in "
              f"{_ms(during[1])}")  # fmt: skip
        sender.join()
    with socket.create_connection(("127.0.0.1", service.port)) as connection:
        started = time.perf_counter()
        connection.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        answer = connection.recv(64)
        print(
            f"a half-sent head: {answer.split(b' ')[1].decode()} after "
            f"{time.perf_counter() - started:.1f} s (--header-timeout 10, --idle-timeout 5)"
        )

    for fault in ("read-only file", "disk full", "deleted"):
        if fault == "read-only file":
            subprocess.run(["chattr", "+i", str(store)], check=True)
        elif fault == "disk full":
            filler = _fill(disk)
        else:
            for part in disk.glob("history.db*"):
                part.unlink()
        started = time.perf_counter()
        answers = [service.request("POST", "/v1/score", next(pending)) for _ in range(20)]
        statuses = sorted({status for status, _ in answers})
        ready = service.request("GET", "/readyz")
        alive = service.request("GET", "/healthz")
        print(f"{fault}: /v1/score {statuses} ({_ms([s for _, s in answers])}); /readyz "
              f"{ready[0]}, /healthz {alive[0]} in {_ms(alive[1])}")  # fmt: skip
        if fault == "deleted":
            break
        if fault == "read-only file":
            subprocess.run(["chattr", "-i", str(store)], check=True)
        else:
            filler.unlink()
        started = time.perf_counter()
        recovered = _until(lambda: service.request("POST", "/v1/score", next(pending))[0] == 200)
        print(f"  cause removed: writes taken again after {_ms(recovered)}")
        del started
    lines = service.log_path.read_text().splitlines()
    print(
        f"log lines about the store: {sum('cannot take writes' in line for line in lines)} "
        f"incidents, {sum('Traceback' in line for line in lines)} tracebacks"
    )


def _send_quietly(connection: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        connection.sendall(payload)


def workers_under_load(store: Path, workdir: Path) -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        started = time.perf_counter()
        service = Service(["--store", str(store), "--workers", "2"], workdir / "workers.log")
        try:
            waited = _until(lambda: service.log_path.read_text().count("serving model") >= 2,
                            seconds=300)  # fmt: skip
            time.sleep(10)  # and they stay up
            log = service.log_path.read_text()
        finally:
            service.stop()
    finally:
        for burner in burners:
            burner.kill()
    restarts = log.count("died") + log.count("Child process") + log.count("restarting")
    took = time.perf_counter() - started - 10
    print(
        f"--workers 2, both cores busy: both workers serving {took:.0f} s after the start "
        f"({waited:.0f} s after listening); restarts: {restarts}"
    )


def gil_hold(store: Path) -> None:
    code = """
import threading, time, sys
gaps, done = [], False
def watch():
    last = time.perf_counter()
    while not done:
        time.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
threading.Thread(target=watch, daemon=True).start()
from fraudlab.serving.clock import Clock
from fraudlab.serving.scorer import load_scorer
from fraudlab.serving.store import SQLiteHistory
store = SQLiteHistory(sys.argv[1], fsync=False, autocheckpoint=False)
started = time.perf_counter()
load_scorer(model_path="models/model.joblib", serving_path="models/serving.json",
            lock_path="dvc.lock", store=store, clock=Clock("data", ahead=0, late=0, earliest=0))
loaded = time.perf_counter() - started
done = True
print(f"{loaded:.1f} {max(gaps):.3f}")
"""
    done = subprocess.run([sys.executable, "-c", code, str(store)], cwd=ROOT, check=True,
                          capture_output=True, text=True)  # fmt: skip
    loaded, hold = done.stdout.split()
    print(f"loading the store in a worker: {loaded} s; the GIL held at most {hold} s at a time")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (a tmpfs of its own, chattr)")
    test_start = test_period_start()
    clean = pd.read_parquet(ROOT / "data" / "clean" / "transactions.parquet")
    workdir = Path(tempfile.mkdtemp(prefix="fraudlab-bench-faults-"))
    disk = workdir / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(disk)], check=True)
    try:
        history = workdir / "history.parquet"
        clean[clean[schema.TX_DATETIME] < test_start].to_parquet(history)
        later = [request_fields(row) for row in clean[clean[schema.TX_DATETIME] >= test_start]
                 .head(500).itertuples(index=False)]  # fmt: skip
        store = disk / "history.db"
        print(f"machine: {os.cpu_count()} cores")
        started = time.perf_counter()
        service = Service(["--history", str(history), "--store", str(store)],
                          workdir / "server.log")  # fmt: skip
        _until(service.ready, seconds=600)
        print(f"seeded and ready in {time.perf_counter() - started:.0f} s ({_rows(store):,} rows)")
        copy = workdir / "history.db"  # the faults below damage the store: keep a copy
        subprocess.run([sys.executable, "-c", "import sqlite3,sys; sqlite3.connect(sys.argv[1])"
                        ".backup(sqlite3.connect(sys.argv[2]))", str(store), str(copy)],
                       check=True)  # fmt: skip
        try:
            faults(service, store, disk, later)
        finally:
            service.stop()
        workers_under_load(copy, workdir)
        gil_hold(copy)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
