"""Scoring replicas sharing one Redis, as clients and operators meet them: real `fraudlab serve`
processes over HTTP, a real redis-server of the test's own.

The consistency rule under test: the store's log is one order of every acknowledged
transaction, and each transaction's features include exactly the transactions (and labels)
committed before it in that order, by any replica or worker. So a replay spread over replicas
gives the answers of one process, and concurrent replicas give the answers one process gives
when it takes the transactions in the log's order."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fraudlab.core import schema
from fraudlab.serving.app import request_fields
from fraudlab.serving.redis_server import RedisServer
from fraudlab.serving.redis_store import RedisHistory
from helpers import Server, refused_start
from test_service import (  # noqa: F401 (module fixtures)
    KEY,
    assert_batch_answers,
    batch,
    deployment,
    features_params_module,
    replay_over_http,
    replayed_period,
    server_args,
)

pytestmark = pytest.mark.slow  # real server processes and a real Redis

ENV = {"FRAUDLAB_API_KEYS": KEY}


@pytest.fixture
def redis_dir(tmp_path, redis_server):
    return tmp_path / "redis"


def _replica(deployment, url: str, *extra: str) -> Server:  # noqa: F811
    return Server(server_args(deployment["root"], url, *extra), env=ENV)


def _seeded(deployment, url: str, *extra: str) -> Server:  # noqa: F811
    history = str(deployment["root"] / "history.parquet")
    return _replica(deployment, url, "--history", history, *extra)


def test_a_replay_round_robin_over_two_replicas_gives_the_answers_of_one_process(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    redis_dir,
):
    """Every request (scores and labels) to the next replica in turn: every feature and score
    equals the batch's, which one process gives (test_service's replay)."""
    later = replayed_period(deployment, batch, days=4)
    with (
        RedisServer(redis_dir) as server,
        _seeded(deployment, server.url) as first,
        _replica(deployment, server.url) as second,
    ):
        online, scores = replay_over_http([first, second], later, names=deployment["names"])
    assert len(later) > 500
    assert_batch_answers(deployment, later, online, scores)


def stale_rounds(server: Server) -> float:
    """The server's count of rounds computed again; fails if it does not publish one."""
    status, text = server.request("GET", "/metrics", key=KEY)
    assert status == 200
    name = "fraudlab_stale_rounds_total"
    samples = [sample for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name]  # fmt: skip
    assert samples, f"{name} is not published"
    return sum(sample.value for sample in samples)


def _post_all(server: Server, rows: list, answers: dict, failures: list) -> None:
    """Post ``rows`` one by one; stop at the first refusal or lost connection (a killed
    server), which goes into ``failures``."""
    for row in rows:
        try:
            status, answer = server.request("POST", "/v1/score", request_fields(row), key=KEY)
        except OSError as exc:  # the connection dropped: what a client of a killed server sees
            failures.append((None, repr(exc)))
            return
        if status != 200:
            failures.append((status, answer))
            return
        answers[int(row.transaction_id)] = answer


def test_concurrent_replicas_and_workers_neither_lose_nor_double_count_a_transaction(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    redis_dir,
    tmp_path,
):
    """Two replicas (one with two workers) score interleaved transactions of the same cards
    and terminals at once. Afterwards every transaction is stored once, and one process fed
    the log's order answers each exactly as the replicas did."""
    later = replayed_period(deployment, batch, days=2)
    rows = list(later.itertuples(index=False))
    answers: dict[int, dict] = {}
    failures: list = []
    # the posting threads drift apart in data time: every one of them stays accepted
    late = ("--max-late", "3 days")
    with RedisServer(redis_dir) as server:
        with (
            _seeded(deployment, server.url, "--workers", "2", *late) as first,
            _replica(deployment, server.url, *late) as second,
        ):
            with RedisHistory(server.url) as store:
                seeded, start = store.count(), store.cursor()
            threads = [
                threading.Thread(target=_post_all, args=(target, rows[k::3], answers, failures))
                for k, target in enumerate((first, first, second))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for replica in (first, second):  # published by every process (a race may not occur)
                stale_rounds(replica)
        assert failures == []
        with RedisHistory(server.url) as store:
            assert store.count() == seeded + len(rows)
            logged = [row[0] for row in store.changes(start).rows]
    assert sorted(logged) == sorted(answers)  # each acknowledged transaction, once
    by_id = {int(row.transaction_id): row for row in rows}
    history = str(deployment["root"] / "history.parquet")
    one = Server(server_args(deployment["root"], "one.db", "--history", history, *late), env=ENV)
    with one:
        for tx_id in logged:
            status, answer = one.request("POST", "/v1/score", request_fields(by_id[tx_id]), key=KEY)
            assert status == 200, answer
            assert answer["features"] == answers[tx_id]["features"], tx_id
            assert answer["score"] == answers[tx_id]["score"], tx_id
    overtaken = [
        a for b, a in itertools.pairwise(logged) if by_id[a].tx_datetime < by_id[b].tx_datetime
    ]
    assert overtaken, "the log never put a transaction after a later one: no interleaving"


def test_kill_9_of_a_replica_loses_nothing_it_acknowledged(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    redis_dir,
):
    """A replica killed mid-stream: every transaction it answered is stored with its answer,
    and the other replica gives the same answer to a client's retry."""
    rows = list(replayed_period(deployment, batch, days=1).itertuples(index=False))
    answers: dict[int, dict] = {}
    with (
        RedisServer(redis_dir, appendfsync="everysec") as server,
        _seeded(deployment, server.url) as doomed,
        _replica(deployment, server.url) as other,
    ):
        poster = threading.Thread(target=_post_all, args=(doomed, rows, answers, []))
        poster.start()
        while len(answers) < 100:
            poster.join(timeout=0.01)
        doomed.kill()
        poster.join()
        acknowledged = dict(answers)
        with RedisHistory(server.url) as store:
            stored = store.lookup(acknowledged)
        assert sorted(stored) == sorted(acknowledged)
        for tx_id in list(acknowledged)[-20:]:
            row = next(r for r in rows if int(r.transaction_id) == tx_id)
            status, retry = other.request("POST", "/v1/score", request_fields(row), key=KEY)
            assert (status, retry) == (200, acknowledged[tx_id])


def test_kill_9_of_redis_with_appendfsync_always_loses_nothing_acknowledged(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    redis_dir,
):
    """Redis killed under load: requests answer 503 (never 200 unstored, never 500) and
    /readyz says unreachable; once Redis is back (its AOF replayed) every acknowledged
    transaction is there and scoring goes on."""
    rows = list(replayed_period(deployment, batch, days=1).itertuples(index=False))
    server = RedisServer(redis_dir, appendfsync="always").start()
    try:
        with _seeded(deployment, server.url) as replica:
            answers: dict[int, dict] = {}
            failures: list = []
            poster = threading.Thread(target=_post_all, args=(replica, rows, answers, failures))
            poster.start()
            while len(answers) < 100 and poster.is_alive():
                poster.join(timeout=0.01)
            server.kill()
            poster.join()
            assert [status for status, _ in failures] == [503]
            assert "unreachable" in failures[0][1]["error"]
            status, ready = replica.request("GET", "/readyz")
            assert (status, ready.get("store")) == (503, "unreachable")
            server.start()
            deadline = time.monotonic() + 30
            while replica.request("GET", "/readyz")[0] != 200:  # the watcher's next PING
                assert time.monotonic() < deadline, "not ready again after Redis came back"
                time.sleep(0.1)
            with RedisHistory(server.url) as store:
                stored = store.lookup(answers)
            assert sorted(stored) == sorted(answers)
            assert all(stored[i].answer is not None for i in answers)
            rest = [r for r in rows if int(r.transaction_id) not in answers]
            status, answer = replica.request("POST", "/v1/score", request_fields(rest[-1]),
                                             key=KEY)  # fmt: skip
            assert status == 200, answer
    finally:
        server.stop()


def test_a_store_that_is_not_there_or_too_new_is_refused_in_one_line(
    deployment,  # noqa: F811
    redis_dir,
):
    with RedisServer(redis_dir, appendfsync=None) as server:
        args = server_args(deployment["root"], server.url)
        status, empty = refused_start(args, env=ENV)
        assert status != 0
        assert "holds no fraudlab history: pass --history FILE" in empty
        client = redis.Redis.from_url(server.url)
        client.hset("{fraudlab}:meta", "schema", 2)
        client.close()
        status, newer = refused_start(args, env=ENV)
        assert status != 0
        assert "schema is version 2, written by a newer fraudlab" in newer
    for message in (empty, newer):
        assert len(message.strip().splitlines()) == 1, message


def test_the_rows_a_replica_seeds_have_their_labels_for_every_replica(
    deployment,  # noqa: F811
    batch,  # noqa: F811
    redis_dir,
):
    """Seeded through one replica, read by another: the known-label features agree with
    the batch from the first transaction on."""
    later = replayed_period(deployment, batch, days=1).head(20)
    with (
        RedisServer(redis_dir) as server,
        _seeded(deployment, server.url),
        _replica(deployment, server.url) as reader,
    ):
        answers = []
        for row in later.itertuples(index=False):
            status, answer = reader.request("POST", "/v1/score", request_fields(row), key=KEY)
            assert status == 200, answer
            answers.append([answer["features"][n] for n in deployment["names"]])
    expected = later[deployment["names"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(np.array(answers), expected, rtol=0, atol=1e-9)
    assert later[schema.TX_DATETIME].is_monotonic_increasing
