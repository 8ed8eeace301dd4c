"""Benchmark the scoring service on loopback, at the reference size, after `dvc repro`.

Seeds a scratch history with the clean data before the test period, starts `fraudlab serve`,
and sends the transactions from the test period on (real customers and terminals, each id new)
with `wrk` (Debian's package, one thread, on this machine). Prints:

* single-transaction requests per second at saturation (wrk, 64 connections);
* p50 / p99 latency at ~1,000 req/s (wrk paced: 100 connections each pausing a random 0-200 ms
  after every answer; latency is each request's own, so a stall also slows the pace, which is
  printed);
* the same paced load of requests answered from the store (each a retry of an earlier one):
  the HTTP, validation and lookup path without scoring, the floor under the latencies above;
* batch throughput (transactions per second, 1,000 per request);
* model-only latency of one row; the store's disk and memory cost per million transactions;
* in process, without HTTP: ``Scorer.score`` rounds of 1, 4 and 1,000 transactions (median
  time per round), and of a round of 1,000 the features and the model call alone, and the
  validation of a 1,000-transaction request body;
* with --parity, instead: the test week replayed one transaction at a time over HTTP, labels
  posted once due, every feature and score compared with the batch pipeline's (on the SQLite
  store, and with --redis on a Redis store too);
* with --redis: the same loads against a Redis store (a private redis-server, AOF
  ``--appendfsync``), one service process and then two (``--workers 2``) on it, each with Redis's
  own CPU, the share of the SQLite figure, the time to seed it, its rounds in process, and
  Redis's memory and append-only file per million transactions.

    dvc repro && python bench/serve.py [--workers 2] [--fsync] [--redis] [--repeat 5]
    dvc repro && python bench/serve.py --parity [--redis]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.features.names import feature_names
from fraudlab.modeling.artifact import load_model
from fraudlab.modeling.pipeline import predict_scores
from fraudlab.serving.app import Settings, parse_body, request_fields, request_models
from fraudlab.serving.clock import Clock, duration_ns
from fraudlab.serving.live import LiveState
from fraudlab.serving.redis_server import RedisServer
from fraudlab.serving.redis_store import RedisHistory
from fraudlab.serving.scorer import load_scorer, retention_ns, row_scorer
from fraudlab.serving.store import (
    Checkpointer,
    HistoryStore,
    SQLiteHistory,
    seed,
    transactions_from_frame,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"
WRK_SCRIPT = r"""
local bodies = {}
local next_body = 0
local step = 1
function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
  next_body = tonumber(os.getenv("BENCH_OFFSET"))
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
function request()
  next_body = next_body + 1
  return wrk.format(nil, os.getenv("BENCH_PATH"), nil, bodies[next_body])
end
local pause = tonumber(os.getenv("BENCH_DELAY_MS"))
if pause > 0 then
  -- uniform in [0, 2 x pause]: the same mean rate, without the connections falling into step
  function delay() return math.random(0, 2 * pause) end
end
"""


class Service:
    def __init__(self, workdir: Path, args: list[str], *, workers: int = 1) -> None:
        self.log = open(workdir / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fraudlab", "serve", "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, "FRAUDLAB_API_KEYS": KEY},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready_workers = 0
        for line in self.process.stderr:
            self.log.write(line)
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match[1]
                break
        else:
            self.log.close()
            log = (workdir / "server.log").read_text()
            raise SystemExit(f"the server did not start:\n{log[-2000:]}")
        threading.Thread(target=self._drain, daemon=True).start()
        # every worker must have loaded the model before anything is measured
        while self.ready_workers < workers:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited; see {workdir / 'server.log'}")
            time.sleep(0.2)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.write(line)
            self.ready_workers += "serving model" in line

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def run_wrk(
    url: str,
    *,
    path: str,
    bodies: Path,
    offset: int,
    seconds: int,
    connections: int,
    delay_ms: int = 0,
):
    """wrk (one thread) sending ``bodies`` from ``offset`` on; each connection waits
    ``delay_ms`` after every answer (a paced load), or none (saturation)."""
    script = bodies.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_OFFSET": str(offset),
           "BENCH_KEY": KEY, "BENCH_PATH": path, "BENCH_DELAY_MS": str(delay_ms)}  # fmt: skip
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)[1])
    total = int(re.search(r"(\d+) requests in", done.stdout)[1])
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    latency = dict(re.findall(r"(50|99)%\s+([\d.]+\w+)", done.stdout))
    return rate, total, int(errors[1]) if errors else 0, latency


def store_cost(clean: pd.DataFrame, workdir: Path, *, n: int = 1_000_000) -> tuple[float, float]:
    """Disk and memory (the in-process running state) per million transactions of history."""
    rows = clean.tail(n)
    path = workdir / "cost.db"
    params = load_params(ROOT / "params.yaml", "features")["features"]
    with SQLiteHistory(path, fsync=False) as store:
        seed(store, rows, labels_known_until=None)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk = store.disk_bytes()
        tracemalloc.start()
        live = LiveState(store, params)
        live.refresh()
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    return disk / len(rows) * 1e6, memory / len(rows) * 1e6


def model_latency() -> float:
    model = load_model(ROOT / "models" / "model.joblib", lock_path=ROOT / "dvc.lock")
    predict = row_scorer(model.pipeline)
    row = np.random.default_rng(0).random((1, len(model.features)))
    for _ in range(200):
        predict(row)
    started = time.perf_counter()
    for _ in range(2000):
        predict(row)
    return (time.perf_counter() - started) / 2000


def in_process(
    history: pd.DataFrame, later: pd.DataFrame, store: HistoryStore, *, details: bool = True
) -> None:
    """Scoring rounds timed without HTTP, on a store seeded as `fraudlab serve` seeds it; with
    ``details``, what a round of 1,000 spends on features, the model and validation."""
    model = load_model(ROOT / "models" / "model.joblib", lock_path=ROOT / "dvc.lock")
    times = history[schema.TX_DATETIME]
    clock = Clock("data", ahead=duration_ns("1h"), late=duration_ns("1 day"), earliest=0)
    keep = pd.Timedelta(retention_ns(model.features_config, clock))
    with store, contextlib.ExitStack() as stack:
        seed(store, history[times > times.max() - keep], labels_known_until=None)
        if store.kind == "sqlite":
            stack.callback(Checkpointer(store.path).start().stop)
        scorer = load_scorer(model_path=ROOT / "models" / "model.joblib",
                             serving_path=ROOT / "models" / "serving.json",
                             lock_path=ROOT / "dvc.lock", store=store,
                             clock=clock)  # fmt: skip
        pending = iter(transactions_from_frame(later))
        for size, rounds in ((1, 2000), (4, 1000), (1000, 20)):
            elapsed = []
            for _ in range(rounds):
                jobs = [[next(pending)] for _ in range(size)]
                if size == 1000:  # a batch request is one job
                    jobs = [[tx for (tx,) in jobs]]
                started = time.perf_counter()
                scorer.score(jobs)
                elapsed.append(time.perf_counter() - started)
            print(f"  round of {size:,}: {np.median(elapsed) * 1e3:.2f} ms "
                  f"({np.median(elapsed) / size * 1e6:,.0f} us per transaction)")  # fmt: skip
        if details:
            round_parts(scorer, pending, later)


def round_parts(scorer, pending, later: pd.DataFrame) -> None:
    """Where a round's time goes: one transaction's features and model call, then a round of
    1,000's features, model call and request validation (never stored: the scratch state is
    dropped afterwards)."""
    elapsed = []
    for _ in range(2000):
        tx = next(pending)
        started = time.perf_counter()
        matrix, _ = scorer.live.score([tx])  # taken into the state, as the service does
        scorer.predict(matrix)
        elapsed.append(time.perf_counter() - started)
    print(f"  one transaction, features + model: median {np.median(elapsed) * 1e6:.0f} us, "
          f"p99 {np.percentile(elapsed, 99) * 1e6:.0f} us")  # fmt: skip
    batch = sorted((next(pending) for _ in range(1000)),
                   key=lambda tx: (tx.time, tx.transaction_id))  # fmt: skip
    started = time.perf_counter()
    matrix, _ = scorer.live.score(batch)
    features = time.perf_counter() - started
    scorer.live.rollback(batch)  # measured, not stored
    started = time.perf_counter()
    scorer.predict(matrix)
    predict = time.perf_counter() - started
    print(f"  of a round of 1,000: the features {features * 1e3:.1f} ms (running state), "
          f"the model call {predict * 1e3:.1f} ms")  # fmt: skip
    body = json.dumps({"transactions": [request_fields(row) for row in
                                        later.head(1000).itertuples(index=False)]})  # fmt: skip
    adapter = TypeAdapter(request_models(Settings())["batch"])
    elapsed = []
    for _ in range(20):
        started = time.perf_counter()
        parse_body(body.encode(), adapter=adapter, content_type="application/json")
        elapsed.append(time.perf_counter() - started)
    print(f"  validating a request of 1,000: {np.median(elapsed) * 1e3:.1f} ms")


def parity(url: str, later: pd.DataFrame, *, delay: pd.Timedelta) -> None:
    """Replay ``later`` one transaction at a time and compare with the batch pipeline."""
    import urllib.request

    features = load_params(ROOT / "params.yaml", "features")["features"]
    names = feature_names(features)
    batch = pd.read_parquet(ROOT / "data" / "features" / "transactions.parquet")
    batch = batch.set_index(schema.TRANSACTION_ID).loc[later[schema.TRANSACTION_ID]]
    model = load_model(ROOT / "models" / "model.joblib", lock_path=ROOT / "dvc.lock")
    expected_scores = predict_scores(model.pipeline, batch, features=names)

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    pending = collections.deque()
    online, scores = [], []
    started = time.perf_counter()
    for row in later.itertuples(index=False):
        due = []
        while pending and pending[0].tx_datetime + delay <= row.tx_datetime:
            due.append(pending.popleft())
        if due:
            labels = [{"transaction_id": int(r.transaction_id), "tx_fraud": int(r.tx_fraud)}
                      for r in due]  # fmt: skip
            post("/v1/labels", {"labels": labels})
        answer = post("/v1/score", request_fields(row))
        online.append([answer["features"][name] for name in names])
        scores.append(answer["score"])
        pending.append(row)
    seconds = time.perf_counter() - started
    difference = np.abs(np.array(online) - batch[names].to_numpy(dtype=np.float64))
    score_difference = np.abs(np.array(scores) - expected_scores)
    print(f"parity: {len(later):,} transactions replayed one by one in {seconds:.0f} s")
    print(f"  largest feature difference from the batch: {difference.max():.3g} "
          f"(in {names[int(difference.max(axis=0).argmax())]})")  # fmt: skip
    threshold = json.loads((ROOT / "models" / "serving.json").read_text())["threshold"]
    differing = int(((np.array(scores) >= threshold) != (expected_scores >= threshold)).sum())
    print(f"  largest score difference: {score_difference.max():.3g}; "
          f"decisions differing: {differing}")  # fmt: skip


def test_period_start() -> pd.Timestamp:
    """The first day of the test period under the committed params."""
    params = load_params(ROOT / "params.yaml", "split", "features")
    split, features = params["split"], params["features"]
    return pd.Timestamp(split.train_start) + pd.Timedelta(
        days=split.train_days + features.label_delay_days
    )


class Loads:
    """wrk runs against one service after another, each on transactions not sent before."""

    def __init__(self, workdir: Path, singles: list[str], args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.singles = singles
        self.args = args
        self.bodies = workdir / "single.jsonl"
        self.bodies.write_text("\n".join(singles) + "\n")
        self.used = 0  # bodies sent so far: each run starts past them (and past those in flight)

    def saturation(self, url: str) -> tuple[float, str]:
        rate, n, errors, latency = run_wrk(
            url, path="/v1/score", bodies=self.bodies, offset=self.used,
            seconds=self.args.seconds, connections=64,
        )  # fmt: skip
        self.used += n + 1000
        return rate, f"p50 {latency.get('50')}, p99 {latency.get('99')}, non-2xx {errors}"

    def paced(self, url: str, *, retries: bool = False) -> tuple[float, str]:
        """100 connections, each waiting 0-200 ms (100 on average) after every answer: ~1,000
        req/s (closed loop: a slow answer delays that connection's next request, so the rate
        achieved is printed with the latencies). ``retries``: bodies already sent."""
        rate, n, errors, latency = run_wrk(
            url, path="/v1/score", bodies=self.bodies, offset=0 if retries else self.used,
            seconds=self.args.seconds, connections=100, delay_ms=int(100_000 / self.args.rate),
        )  # fmt: skip
        if not retries:
            self.used += n + 1000
        return rate, f"p50 {latency.get('50')}, p99 {latency.get('99')}, non-2xx {errors}"

    def batch(self, url: str) -> tuple[float, str]:
        rows = [self.singles[i : i + 1000] for i in range(self.used, len(self.singles) - 999, 1000)]
        batch_file = self.workdir / "batch.jsonl"
        batch_file.write_text(
            "\n".join('{"transactions":[' + ",".join(b) + "]}" for b in rows) + "\n"
        )
        # a third of the time: a batch run uses bodies fast (~20k transactions a second)
        rate, done, errors, latency = run_wrk(
            url, path="/v1/score/batch", bodies=batch_file, offset=0,
            seconds=max(3, self.args.seconds // 3), connections=4,
        )  # fmt: skip
        self.used += min(done, len(rows)) * 1000 + 4000
        note = " (ran out of batch bodies: retries were measured too)" if done > len(rows) else ""
        return rate * 1000, f"p50 {latency.get('50')} per request, non-2xx {errors}{note}"


def measured(what: str, run, *, redis: RedisServer | None = None) -> float:
    """Print one load's figures (with Redis's own CPU while it ran); its rate."""
    cpu = redis.cpu_seconds() if redis else 0.0
    started = time.perf_counter()
    rate, figures = run()
    redis_cpu = ""
    if redis:
        share = (redis.cpu_seconds() - cpu) / (time.perf_counter() - started)
        redis_cpu = f", Redis CPU {share:.0%} of a core"
    print(f"  {what}: {rate:,.0f}{' tx/s' if 'batch' in what else ' req/s'}, {figures}{redis_cpu}")
    return rate


def http_figures(
    loads: Loads, url: str, *, redis: RedisServer | None = None, repeat: int = 1
) -> dict[str, float]:
    """Saturation and paced runs (``repeat`` times each, alternating), then a batch run; the
    lowest rate of each."""
    rate: dict[str, float] = {"single": float("inf"), "paced": float("inf")}
    for run in range(repeat):
        tag = f" (run {run + 1} of {repeat})" if repeat > 1 else ""
        single = measured(
            f"single, saturation (wrk, 64 connections){tag}",
            lambda: loads.saturation(url),
            redis=redis,
        )
        paced = measured(
            f"single, paced at {loads.args.rate:,.0f} req/s (wrk, 100 connections){tag}, achieved",
            lambda: loads.paced(url),
            redis=redis,
        )
        rate = {"single": min(rate["single"], single), "paced": min(rate["paced"], paced)}
    if redis is None:
        measured("the same paced load answered from the store (retries, no scoring)",
                 lambda: loads.paced(url, retries=True))  # fmt: skip
    rate["batch"] = measured("batch of 1,000 (wrk, 4 connections)", lambda: loads.batch(url),
                             redis=redis)  # fmt: skip
    return rate


def redis_cost(clean: pd.DataFrame, server: RedisServer, *, n: int = 1_000_000) -> None:
    """Redis's memory and append-only file per million seeded transactions, and the time to
    seed them."""
    import redis

    client = redis.Redis.from_url(server.url)

    def rewriting() -> None:
        while True:
            persistence = client.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                return
            time.sleep(0.1)

    client.flushall()
    before = int(client.info("memory")["used_memory"])
    rows = clean.tail(n)
    with RedisHistory(server.url) as store:
        started = time.perf_counter()
        seed(store, rows, labels_known_until=None)
        seconds = time.perf_counter() - started
        keys = store.memory_bytes()
    used = int(client.info("memory")["used_memory"]) - before
    rewriting()  # Redis may have started one itself, as the file grew
    client.bgrewriteaof()
    rewriting()
    aof = sum(f.stat().st_size for f in (server.directory / "appendonlydir").iterdir())
    client.flushall()
    client.close()
    per = 1e6 / len(rows) / 2**20
    print(f"  seeding {len(rows):,} transactions: {seconds:.1f} s; per million: "
          f"{used * per:.0f} MiB of Redis memory ({keys * per:.0f} MiB in the store's keys), "
          f"{aof * per:.0f} MiB of append-only file after a rewrite")  # fmt: skip


def redis_figures(
    loads: Loads, workdir: Path, before: pd.DataFrame, later: pd.DataFrame,
    sqlite: dict[str, float], args: argparse.Namespace,
) -> None:  # fmt: skip
    print(f"Redis store (a private redis-server, appendonly yes, appendfsync {args.appendfsync}):")
    # seeded with what the SQLite runs were sent too: the loads go on where they stopped, inside
    # the data clock's window
    history = workdir / "redis-history.parquet"
    pd.concat([before, later.head(loads.used)]).to_parquet(history)
    with RedisServer(workdir / "redis", appendfsync=args.appendfsync) as server:
        common = ["--clock", "data", "--max-ahead", "1 day", "--store", server.url]
        started = time.perf_counter()
        service = Service(workdir, [*common, "--history", str(history)])
        print(f" one service process: seeded and ready in {time.perf_counter() - started:.0f} s")
        try:
            one = http_figures(loads, service.url, redis=server)
        finally:
            service.stop()
        print("  of the SQLite figures: " + ", ".join(
            f"{name} {one[name] / sqlite[name]:.0%}" for name in one))  # fmt: skip
        started = time.perf_counter()
        service = Service(workdir, [*common, "--workers", "2"], workers=2)
        print(f" two service processes (--workers 2) on the same Redis: ready in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        try:
            two = http_figures(loads, service.url, redis=server)
        finally:
            service.stop()
        print("  two over one: " + ", ".join(f"{name} {two[name] / one[name]:.2f}x"
                                             for name in two))  # fmt: skip
        redis_cost(before, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # one: on these 2 cores the load generator needs the other (two measured slower)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fsync", action="store_true", help="fsync every commit")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the single-request loads on the SQLite store")  # fmt: skip
    parser.add_argument("--rate", type=float, default=1000.0, help="paced run, req/s")
    parser.add_argument("--parity", action="store_true", help="replay the test week over HTTP")
    parser.add_argument("--redis", action="store_true", help="the same loads on a Redis store")
    parser.add_argument("--appendfsync", default="everysec", choices=("everysec", "always"),
                        help="Redis's AOF fsync policy (%(default)s)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    features = load_params(ROOT / "params.yaml", "features")["features"]
    test_start = test_period_start()
    clean = pd.read_parquet(ROOT / "data" / "clean" / "transactions.parquet")
    clean = clean.sort_values(schema.SORT_KEYS, ignore_index=True)
    workdir = Path(tempfile.mkdtemp(prefix="fraudlab-bench-serve-"))
    try:
        history = workdir / "history.parquet"
        before = clean[clean[schema.TX_DATETIME] < test_start]
        before.to_parquet(history)
        later = clean[clean[schema.TX_DATETIME] >= test_start]
        print(f"machine: {os.cpu_count()} cores; load generators on the same machine")
        if args.parity:
            week = later[later[schema.TX_DATETIME] < test_start + pd.Timedelta(days=7)]
            delay = pd.Timedelta(days=features.label_delay_days)
            with contextlib.ExitStack() as stack:
                stores = {"SQLite": str(workdir / "parity.db")}
                if args.redis:
                    server = stack.enter_context(RedisServer(workdir / "redis-parity"))
                    stores["Redis"] = server.url
                for name, store in stores.items():
                    service = Service(workdir, ["--clock", "data", "--history", str(history),
                                                "--store", store])  # fmt: skip
                    try:
                        print(f"{name} store:")
                        parity(service.url, week, delay=delay)
                    finally:
                        service.stop()
            return
        loads = Loads(workdir, [json.dumps(request_fields(row))
                                for row in later.itertuples(index=False)], args)  # fmt: skip
        options = ["--workers", str(args.workers)] + (["--fsync"] if args.fsync else [])
        started = time.perf_counter()
        # wrk's connections send out of order and each run skips ahead of the last: the data
        # clock must accept a day ahead (a replay, not live traffic)
        service = Service(workdir, ["--clock", "data", "--max-ahead", "1 day", "--history",
                                    str(history), "--store", str(workdir / "history.db"),
                                    *options],
                          workers=args.workers)  # fmt: skip
        print(f"SQLite store, {args.workers} worker(s), fsync {'on' if args.fsync else 'off'}: "
              f"seeded and ready in {time.perf_counter() - started:.0f} s")  # fmt: skip
        try:
            sqlite = http_figures(loads, service.url, repeat=args.repeat)
        finally:
            service.stop()
        if args.redis:
            redis_figures(loads, workdir, before, later, sqlite, args)
        print(f"model only, one row: {model_latency() * 1e6:.0f} us")
        print("in process (Scorer.score, no HTTP), SQLite store:")
        in_process(before, later, SQLiteHistory(workdir / "rounds.db", fsync=False,
                                                autocheckpoint=False))  # fmt: skip
        if args.redis:
            with RedisServer(workdir / "redis-rounds", appendfsync=args.appendfsync) as server:
                print("in process, Redis store:")
                in_process(before, later, RedisHistory(server.url), details=False)
        disk, memory = store_cost(clean, workdir)
        print(f"history store per million seeded transactions: {disk / 2**20:.0f} MiB on disk "
              f"(SQLite), {memory / 2**20:.0f} MiB in each service process's memory (the "
              "running state, either store; a scored transaction also keeps its answer for "
              "retries, ~725 bytes)")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
