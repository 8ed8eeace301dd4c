"""The Redis history store on its own: a write computed on a stale view is refused whole, the
schema is versioned, old entries go whole, and with ``appendfsync always`` an acknowledged
write survives kill -9 of the writer and of Redis itself. (What both stores share is in
test_store.py; replicas over HTTP in test_replicas.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from fraudlab.core.errors import UserError
from fraudlab.serving.health import RedisHealth, kind_of
from fraudlab.serving.live import LiveState
from fraudlab.serving.redis_server import RedisServer
from fraudlab.serving.redis_store import RedisHistory, redacted
from fraudlab.serving.store import (
    ConflictError,
    StaleError,
    StoreVersionError,
    Transaction,
    UnknownTransactionError,
)
from helpers import features_with

DAY = 86_400 * 10**9
HOUR = 3_600 * 10**9


def _tx(tx_id: int, *, at: int, customer: int = 1) -> Transaction:
    return Transaction(tx_id, 1_000 * DAY + at, customer, 7, 10.0 + tx_id)


@pytest.fixture
def store(redis_url):
    with RedisHistory(redis_url) as opened:
        yield opened


def test_a_write_computed_before_another_processes_write_is_refused_whole(store, redis_url):
    store.add([_tx(1, at=0)])
    live = LiveState(store, features_with())
    live.refresh()
    with RedisHistory(redis_url) as other:  # another replica commits first
        other.add_scored([_tx(2, at=1)], ["{}"], prune_before=0, prune_limit=1,
                         expect=other.cursor())  # fmt: skip
    with pytest.raises(StaleError):
        store.add_scored([_tx(3, at=2)], ["{}"], prune_before=0, prune_limit=1,
                         expect=live.cursor)  # fmt: skip
    assert sorted(store.lookup([1, 2, 3])) == [1, 2]  # nothing of the stale write
    live.refresh()  # taken in, the write goes through
    cursor = store.add_scored([_tx(3, at=2)], ["{}"], prune_before=0, prune_limit=1,
                              expect=live.cursor)  # fmt: skip
    assert cursor == store.cursor()
    with pytest.raises(StaleError):  # stored meanwhile: the round reads its answer instead
        store.add_scored([_tx(3, at=2)], ["{}"], prune_before=0, prune_limit=1, expect=cursor)
    with pytest.raises(ConflictError):  # a seed's write (no position) is refused outright
        store.add_scored([_tx(3, at=2)], ["{}"], prune_before=0, prune_limit=1)


def test_a_write_goes_after_other_processes_writes_on_other_cards_and_terminals(store, redis_url):
    """Only an entry on one of the round's cards or terminals makes it stale: the others do
    not change its features. The writer's state then takes in the others' rows, not its own
    a second time."""
    store.add([_tx(1, at=0)])
    live = LiveState(store, features_with())
    live.refresh()
    with RedisHistory(redis_url) as other:
        elsewhere = Transaction(2, 1_000 * DAY + 1, 2, 8, 5.0)  # another card and terminal
        other.add_scored([elsewhere], ["{}"], prune_before=0, prune_limit=1,
                         expect=other.cursor())  # fmt: skip
        other.label([(2, 1)])
    position = live.cursor
    live.score([_tx(3, at=2)])
    live.commit(store.add_scored([_tx(3, at=2)], ["{}"], prune_before=0, prune_limit=1,
                                 expect=position))  # fmt: skip
    assert live.cursor == position  # the others' entries are still to be read
    live.refresh()
    assert live.cards[1].ids.tolist() == [1, 3]  # its own row once
    assert live.cards[2].ids.tolist() == [2]
    assert live.places[8].labels.tolist() == [1]
    assert live.cursor == store.cursor()
    with RedisHistory(redis_url) as other:  # a label on the card's terminal: stale again
        other.label([(1, 1)])
    position = live.cursor
    with pytest.raises(StaleError):
        store.add_scored([_tx(4, at=3)], ["{}"], prune_before=0, prune_limit=1, expect=position)


def test_a_label_batch_with_an_unknown_id_records_nothing(store):
    store.add([_tx(1, at=0), _tx(2, at=1)])
    before = store.cursor()
    with pytest.raises(UnknownTransactionError, match=r"no stored transaction 9 \(and 1 more"):
        store.label([(1, 1), (9, 0), (10, 1)])
    assert store.cursor() == before
    assert store.label([(1, 1)]) == []
    assert store.label([(1, 0), (2, 0)]) == [(1, 1, 0)]  # a first label is not a change


def test_seeded_rows_go_in_entries_pruned_whole_once_no_window_reaches_them(store):
    rows = [_tx(i, at=i * HOUR // 4) for i in range(12)]  # three hours, four an hour
    store.add(rows, labels=[i % 2 for i in range(12)])
    assert store.count() == 12
    # the first hour's entry ends at 45 min: before 50 min, it goes; the next ones stay
    assert store.prune(before=1_000 * DAY + 50 * 60 * 10**9) == 4
    assert sorted(store.lookup(range(12))) == list(range(4, 12))
    live = LiveState(store, features_with())
    live.refresh()
    assert live.cards[1].ids.tolist() == list(range(4, 12))
    assert live.places[7].labels.tolist() == [i % 2 for i in range(4, 12)]


def test_the_schema_is_versioned_and_what_it_cannot_read_is_refused(redis_url):
    client = redis.Redis.from_url(redis_url)
    with RedisHistory(redis_url) as store:
        assert not store.exists()
        store.add([_tx(1, at=0)])
        assert store.exists()
    client.hset("{fraudlab}:meta", "schema", 99)
    with pytest.raises(StoreVersionError, match="schema is version 99, written by a newer"):
        RedisHistory(redis_url)
    client.flushall()
    client.set("{fraudlab}:rows", "someone else's")
    with pytest.raises(StoreVersionError, match="not a fraudlab history store"):
        RedisHistory(redis_url)
    assert client.get("{fraudlab}:rows") == b"someone else's"  # untouched
    client.close()


def test_a_password_is_never_shown_and_a_wrong_one_is_one_line(tmp_path):
    assert redacted("redis://:s3cret@db:6380/2") == "redis://:***@db:6380/2"
    assert redacted("rediss://app:s3cret@db/0") == "rediss://app:***@db/0"
    with RedisServer(tmp_path, appendfsync=None, password="s3cret") as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with RedisHistory(url) as store:
            store.add([_tx(1, at=0)])
            assert store.count() == 1
        with pytest.raises(UserError) as refused:
            RedisHistory(f"redis://:wrong@127.0.0.1:{server.port}/0")
    assert "wrong" not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_health_says_unreachable_once_redis_is_gone_and_recovers(tmp_path):
    server = RedisServer(tmp_path, appendfsync=None).start()
    try:
        with RedisHistory(server.url, timeout=1) as store:
            health = RedisHealth(store)
            assert health.check() is None
            server.kill()
            assert kind_of(health.check()) == "unreachable"
            server.start()
            assert health.check() is None
    finally:
        server.stop()


WRITER = """
import sys
from fraudlab.serving.redis_store import RedisHistory
from fraudlab.serving.store import Transaction
store = RedisHistory(sys.argv[1], timeout=2)
cursor = store.cursor()
for i in range(1, 100_000):
    cursor = store.add_scored([Transaction(i, i * 1000, i % 13, i % 7, float(i))], [str(i)],
                              prune_before=0, prune_limit=1, expect=cursor)
    print(i, flush=True)
"""


def _acknowledged(server: RedisServer, *, kill_redis: bool) -> tuple[list[int], int]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acknowledged = [int(writer.stdout.readline()) for _ in range(300)]
    if kill_redis:
        server.kill()  # mid-stream: the writer's next write fails
        acknowledged += [int(line) for line in writer.stdout]
    else:
        writer.kill()
    writer.wait(timeout=30)
    writer.stdout.close()
    if kill_redis:
        server.start()  # the same directory: Redis replays its AOF
    with RedisHistory(server.url) as store:
        stored = store.lookup(range(1, acknowledged[-1] + 2))
        rows = LiveState(store, features_with())
        rows.refresh()
        ids = rows.cards[0].ids.tolist()
    assert all(stored[i].answer == str(i) for i in acknowledged)
    assert ids == [i for i in range(1, len(stored) + 1) if i % 13 == 0]  # each once, in order
    return acknowledged, len(stored)


def test_kill_9_of_a_writer_loses_nothing_acknowledged(tmp_path):
    with RedisServer(tmp_path, appendfsync="everysec") as server:
        acknowledged, stored = _acknowledged(server, kill_redis=False)
    assert stored >= len(acknowledged)  # the last write may have landed unacknowledged


def test_kill_9_of_redis_with_appendfsync_always_loses_nothing_acknowledged(tmp_path):
    server = RedisServer(tmp_path, appendfsync="always")
    server.start()
    try:
        acknowledged, stored = _acknowledged(server, kill_redis=True)
    finally:
        server.stop()
    assert stored >= len(acknowledged) >= 300
