"""The scoring service's history in Redis, shared by every service process and replica that
names the same ``redis://HOST:PORT/DB`` (``rediss://`` for TLS, ``redis://:PASSWORD@...`` or
``redis://USER:PASSWORD@...`` for authentication, ``unix:///path?db=N`` for a socket).

Layout (one hash tag, so every key lives in one slot of a cluster too):

* ``{fraudlab}:log``, a stream: the change log. Each entry is a batch of rows (a scoring round,
  or a slice of a seed, rows in (time, id) order) or one label change; its id is ``SEQ-0``, SEQ
  counting entries from 1 (``{fraudlab}:seq``).
* ``{fraudlab}:rows``, ``:fraud`` and ``:answers``, hashes by transaction id: each row's content
  (what idempotency compares), its latest label, and the service's answer (what a retry gets).
* ``{fraudlab}:ends``: per log entry, in log order, its id and its latest transaction time
  (microseconds), so pruning finds what no window reaches without reading the rows.
* ``{fraudlab}:meta``: the schema version, the newest transaction time.

**Consistency.** Every write is one Lua script, so Redis applies it whole and alone. The
scorer's write carries the log position its features were computed at and is refused
(``StaleError``) if any process wrote since; the scorer then takes in what was written and
computes the round again. So the log is one order of every transaction, and each transaction's
features include every transaction committed before it in that order, by any process: the
scores of a replay are those of one process taking the transactions in log order.

**Durability** is Redis's: an acknowledged transaction is one whose script returned. With
``appendonly yes`` and ``appendfsync always``, Redis writes and fsyncs the script's effects
before it answers, so neither a ``kill -9`` of Redis nor a power cut loses it; with
``everysec`` (Redis's default for AOF), it is written to the operating system before the answer
(a ``kill -9`` of Redis loses nothing) and fsynced within about a second (a power cut can lose
that second); without AOF, whatever came after the last snapshot. ``persistence()`` says which.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from redis.exceptions import RedisError, ResponseError

from fraudlab.core.errors import UserError
from fraudlab.serving.store import (
    Changes,
    ConflictError,
    StaleError,
    Stored,
    StoreVersionError,
    Transaction,
    UnknownTransactionError,
    _require_finite,
    checked_labels,
    new_rows,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
URL_SCHEMES = ("redis", "rediss", "unix")
# rows per log entry when seeding, and the time one spans at most: an entry is pruned whole,
# in one write's script (which Redis runs alone), once its newest row is out of every window's
# reach
_SEED_ROWS = 100
_SEED_SPAN_NS = 3_600 * 10**9
# ids per HMGET, entries per XRANGE: bounded replies, whatever the size of the store
_CHUNK = 5_000
# Redis errors that mean the store cannot take writes now (503), as opposed to a bug
WRITE_ERRORS: tuple[type[Exception], ...] = (RedisError,)


def is_redis_url(location: str) -> bool:
    return urlsplit(location).scheme in URL_SCHEMES


def redacted(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# The oldest log entry, if no window reaches it (its newest row is before ``before``, in
# microseconds): its rows, their labels and answers, the entry, and the marks it left on cards
# and terminals that no later entry moved. The count of rows pruned, or -1 if nothing was.
_PRUNE_OLDEST = """
local function prune_oldest(log, rows, answers, ends, fraud, touch, before)
    local oldest = redis.call('LINDEX', ends, 0)
    if not oldest then return -1 end
    local id, newest_us = string.match(oldest, '^(%S+) (%S+)$')
    if tonumber(newest_us) >= tonumber(before) then return -1 end
    local pruned = 0
    local found = redis.call('XRANGE', log, id, id)
    if found[1] then
        local fields = found[1][2]
        for f = 1, #fields, 2 do
            if fields[f] == 'ids' then
                for gone in string.gmatch(fields[f + 1], '%S+') do
                    redis.call('HDEL', rows, gone)
                    redis.call('HDEL', answers, gone)
                    redis.call('HDEL', fraud, gone)
                    pruned = pruned + 1
                end
            elseif fields[f] == 'touched' then
                local seq = tonumber(string.match(id, '^(%d+)'))
                for _, key in ipairs(cjson.decode(fields[f + 1])) do
                    local last = redis.call('HGET', touch, key)
                    if last and tonumber(last) <= seq then
                        redis.call('HDEL', touch, key)
                    end
                end
            end
        end
        redis.call('XDEL', log, id)
    end
    redis.call('LPOP', ends)
    return pruned
end
"""
# KEYS: log, rows, answers, ends, fraud, touch; ARGV: before (us)
_PRUNE = (
    _PRUNE_OLDEST
    + """
return prune_oldest(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
"""
)

# A write computed at log position EXPECTED is stale if an entry after it touched one of the
# write's cards or terminals (``touch``: per card and terminal, the last entry that did): its
# features would have included that entry. Entries on other cards and terminals do not change
# them, so the write goes after them.
# KEYS: seq, log, rows, answers, ends, meta, fraud, touch
# ARGV: expected seq ("" for none: a seed), payload, entry's newest time (us), its newest
#       time (ns), prune before (us, "" for none), n, the cards and terminals touched (JSON),
#       then n ids, n contents, n answers ("" for none), n labels ("" for none)
_APPEND = (
    _PRUNE_OLDEST
    + """
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local touched = cjson.decode(ARGV[7])
if ARGV[1] ~= '' and head ~= tonumber(ARGV[1]) then
    local expected = tonumber(ARGV[1])
    for _, key in ipairs(touched) do
        local last = redis.call('HGET', KEYS[8], key)
        if last and tonumber(last) > expected then
            return {'stale', head}
        end
    end
end
local n = tonumber(ARGV[6])
local ids_at, contents_at, answers_at, labels_at = 7, 7 + n, 7 + 2 * n, 7 + 3 * n
for i = 1, n do
    local known = redis.call('HGET', KEYS[3], ARGV[ids_at + i])
    if known and ARGV[1] ~= '' then
        return {'stale', head}  -- another replica took it meanwhile: read its answer
    end
    if known then
        return {'conflict', ARGV[ids_at + i]}
    end
end
local ids = {}
for i = 1, n do
    local id = ARGV[ids_at + i]
    redis.call('HSET', KEYS[3], id, ARGV[contents_at + i])
    if ARGV[answers_at + i] ~= '' then
        redis.call('HSET', KEYS[4], id, ARGV[answers_at + i])
    end
    if ARGV[labels_at + i] ~= '' then
        redis.call('HSET', KEYS[7], id, ARGV[labels_at + i])
    end
    ids[i] = id
end
local seq = redis.call('INCR', KEYS[1])
redis.call('HSETNX', KEYS[6], 'schema', '@SCHEMA@')
local entry = redis.call('XADD', KEYS[2], seq .. '-0', 'k', 'r', 'rows', ARGV[2],
                         'ids', table.concat(ids, ' '), 'touched', ARGV[7])
for _, key in ipairs(touched) do
    redis.call('HSET', KEYS[8], key, seq)
end
redis.call('RPUSH', KEYS[5], entry .. ' ' .. ARGV[3])
local newest = redis.call('HGET', KEYS[6], 'newest')
if not newest or #ARGV[4] > #newest or (#ARGV[4] == #newest and ARGV[4] > newest) then
    redis.call('HSET', KEYS[6], 'newest', ARGV[4])
end
-- what no window reaches goes a little per write: at most one entry, oldest first
local pruned = 0
if ARGV[5] ~= '' then
    pruned = math.max(
        prune_oldest(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], KEYS[8], ARGV[5]), 0)
end
return {'ok', seq, pruned}
""".replace("@SCHEMA@", str(SCHEMA_VERSION))
)

# KEYS: seq, log, rows, fraud, ends, touch
# ARGV: now (ms), then triples of id, label, the terminal's key in ``touch``
_LABEL = """
local unknown = {}
for i = 2, #ARGV, 3 do
    if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 0 then
        table.insert(unknown, ARGV[i])
    end
end
if #unknown > 0 then
    return {'unknown', unknown[1], #unknown}
end
local changed = {}
for i = 2, #ARGV, 3 do
    local id, label, terminal = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local previous = redis.call('HGET', KEYS[4], id)
    if previous ~= label then
        redis.call('HSET', KEYS[4], id, label)
        local content = redis.call('HGET', KEYS[3], id)
        local seq = redis.call('INCR', KEYS[1])
        local entry = redis.call('XADD', KEYS[2], seq .. '-0', 'k', 'l', 'id', id,
                                 'row', content, 'fraud', label, 'previous', previous or '',
                                 'at', ARGV[1], 'touched', cjson.encode({terminal}))
        redis.call('HSET', KEYS[6], terminal, seq)
        -- the row's time, in microseconds: the entry goes with the rows of its time
        local ns = string.match(content, '^%[(%d+),') or '0'
        local us = #ns > 3 and string.sub(ns, 1, -4) or '0'
        redis.call('RPUSH', KEYS[5], entry .. ' ' .. us)
        if previous then
            table.insert(changed, id)
            table.insert(changed, previous)
            table.insert(changed, label)
        end
    end
end
return {'ok', changed}
"""

# KEYS: log, rows, answers; ARGV: XRANGE start, count, then ids. What a scoring round reads,
# in one command: the log after its position, and its ids' rows and answers.
_READ = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local ids = {}
for i = 3, #ARGV do ids[i - 2] = ARGV[i] end
return {entries, redis.call('HMGET', KEYS[2], unpack(ids)),
        redis.call('HMGET', KEYS[3], unpack(ids))}
"""


def _touch_keys(transactions: Iterable[Transaction]) -> bytes:
    """The cards and terminals a write touches, as keys of ``touch`` (JSON keeps 7 and "7"
    apart)."""
    keys = {"c" + orjson.dumps(tx.customer_id).decode() for tx in transactions}
    keys |= {"t" + orjson.dumps(tx.terminal_id).decode() for tx in transactions}
    return orjson.dumps(sorted(keys))


def _content(tx: Transaction) -> bytes:
    """What idempotency compares, exactly (orjson writes the shortest float that reads back the
    same, and ints of any size): [time, customer, terminal, amount]."""
    return orjson.dumps([tx.time, tx.customer_id, tx.terminal_id, tx.amount])


def _entries(rows: list[tuple]) -> Iterator[list[tuple]]:
    """Rows (in time order, each led by its transaction) in log entries of at most
    ``_SEED_ROWS`` rows and ``_SEED_SPAN_NS`` of time."""
    part: list[tuple] = []
    for row in rows:
        if part and (len(part) == _SEED_ROWS or row[0].time - part[0][0].time >= _SEED_SPAN_NS):
            yield part
            part = []
        part.append(row)
    if part:
        yield part


def _after(cursor: tuple[int, int]) -> str:
    """The XRANGE start just past a log position."""
    return f"({cursor[0]}-0" if cursor[0] else "-"


def _position(entry_id: bytes) -> tuple[int, int]:
    seq = int(entry_id.split(b"-")[0])
    return (seq, seq)


def _changes(entries: list, cursor: tuple[int, int], *, own: set[int]) -> Changes:
    """Log entries (XRANGE's, fields as a flat list or a dict) as ``Changes``: rows with their
    latest label among these entries, and the label changes of rows before them. The rows of
    ``own`` entries, the reader's own writes already in its state, are left out (and the
    entries dropped from ``own``)."""
    rows: list[list] = []
    where: dict[int, int] = {}  # a row read now: its index in ``rows``
    labels: list[tuple] = []
    for entry_id, flat in entries:
        fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
        if fields[b"k"] == b"r":
            seq = _position(entry_id)[0]
            if seq in own:
                own.discard(seq)
                continue
            for row in orjson.loads(fields[b"rows"]):
                where[row[0]] = len(rows)
                rows.append(row)
            continue
        tx_id, fraud = int(fields[b"id"]), int(fields[b"fraud"])
        if tx_id in where:
            rows[where[tx_id]][5] = fraud
        else:
            time_ns, _, terminal, _ = orjson.loads(fields[b"row"])
            labels.append((0, tx_id, time_ns, terminal, fraud))
    end = _position(entries[-1][0]) if entries else cursor
    return Changes(rows=[(*row[:5], row[5] or 0) for row in rows], labels=labels, cursor=end)


def _stored(ids: list[int], contents: list, answers: list) -> dict[int, Stored]:
    found = {}
    for tx_id, content, answer in zip(ids, contents, answers, strict=True):
        if content is not None:
            time_ns, customer, terminal, amount = orjson.loads(content)
            found[tx_id] = Stored(
                Transaction(tx_id, time_ns, customer, terminal, amount),
                None if answer is None else answer.decode(),
            )
    return found


class RedisHistory:
    """``HistoryStore`` in Redis, for several processes and machines at once."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "fraudlab", timeout: float = 5.0) -> None:
        self.url = url
        self.name = redacted(url)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )
        tag = "{" + prefix + "}"
        self.keys = {
            part: f"{tag}:{part}"
            for part in ("seq", "log", "rows", "fraud", "answers", "ends", "meta", "touch")
        }
        # entries this process wrote past its last read: already in its state when read
        self._own: set[int] = set()
        self._append = self._redis.register_script(_APPEND)
        self._read = self._redis.register_script(_READ)
        self._label = self._redis.register_script(_LABEL)
        self._prune = self._redis.register_script(_PRUNE)
        try:
            self._migrate()
        except RedisError as exc:
            raise UserError(f"--store {self.name}: {exc}") from None

    # ---- schema ----------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Mark a new store with ``SCHEMA_VERSION``; refuse one written by a newer fraudlab, or
        keys under this prefix that are not a fraudlab store (version 1 is the first: nothing
        older exists to migrate)."""
        version = self._redis.hget(self.keys["meta"], "schema")
        if version is None:
            present = [key for key in self.keys.values() if self._redis.exists(key)]
            if present:
                raise StoreVersionError(
                    f"{self.name}: keys {present} are there but not a fraudlab history store "
                    "(no schema version): serve from another database or prefix"
                )
            return
        if not version.isdigit() or int(version) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.name}: its schema is version {version.decode(errors='replace')}, "
                f"written by a newer fraudlab (this one knows versions up to {SCHEMA_VERSION}): "
                "upgrade fraudlab, or serve from another store"
            )

    def exists(self) -> bool:
        """Whether a fraudlab store is there (created or seeded before)."""
        return self._redis.hget(self.keys["meta"], "schema") is not None

    def create(self) -> None:
        self._redis.hsetnx(self.keys["meta"], "schema", SCHEMA_VERSION)

    # ---- the HistoryStore interface --------------------------------------------------------
    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Nothing to hold: a write refuses a stale view instead (``StaleError``)."""
        yield

    def lookup(self, transaction_ids: Iterable[int]) -> dict[int, Stored]:
        ids = list(dict.fromkeys(transaction_ids))
        found: dict[int, Stored] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self.keys["rows"], chunk)
            pipe.hmget(self.keys["answers"], chunk)
            found.update(_stored(chunk, *pipe.execute()))
        return found

    def read(
        self, cursor: tuple[int, int], transaction_ids: Iterable[int]
    ) -> tuple[Changes, dict[int, Stored]]:
        """``changes(cursor)`` and ``lookup(transaction_ids)`` from one snapshot, in one
        command (a script) unless a backlog or many ids need more."""
        ids = list(dict.fromkeys(transaction_ids))
        if not ids or len(ids) > _CHUNK:
            return self.changes(cursor), self.lookup(ids)
        keys = [self.keys[k] for k in ("log", "rows", "answers")]
        entries, contents, answers = self._read(keys=keys, args=[_after(cursor), _CHUNK, *ids])
        if len(entries) == _CHUNK:  # a backlog (another process seeded): read it all
            return self.changes(cursor), self.lookup(ids)
        return _changes(entries, cursor, own=self._own), _stored(ids, contents, answers)

    def add(
        self,
        transactions: Iterable[Transaction],
        answers: Iterable[str | None] | None = None,
        labels: Iterable[int | None] | None = None,
    ) -> list[bool]:
        """Store transactions (with answers, or labels when seeding); per transaction, True if
        new, False if already stored with the same content. A conflict (ConflictError) is
        found before anything is written."""
        added, new = new_rows(self, transactions, answers, labels)
        new.sort(key=lambda item: (item[0].time, item[0].transaction_id))
        pipe = self._redis.pipeline(transaction=False)
        for part in _entries(new):
            self._queue_append(
                pipe,
                [tx for tx, _, _ in part],
                [answer for _, answer, _ in part],
                [label for _, _, label in part],
                expect=None,
                prune_before=None,
            )
        for outcome in pipe.execute():
            self._check_append(outcome)
        return added

    def add_scored(
        self,
        transactions: list[Transaction],
        answers: list[str],
        *,
        prune_before: int,
        prune_limit: int,
        expect: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """The scorer's write, one script: refused with StaleError if an entry after
        ``expect`` (the position the features were computed at) touched one of its cards or
        terminals, or stored one of its ids; else the rows, their answers, and at most one
        entry no window reaches pruned. The position the caller's state is at after it:
        ``expect`` if others wrote in between (their entries are still to be read; this one
        will be skipped then), or this entry's. ``prune_limit`` is the SQLite store's (here an
        entry at most per write)."""
        del prune_limit
        _require_finite(transactions)
        outcome = self._queue_append(
            self._redis,
            transactions,
            answers,
            [None] * len(transactions),
            expect=None if expect is None else expect[0],
            prune_before=prune_before,
        )
        seq = self._check_append(outcome)
        if expect is not None and seq != expect[0] + 1:
            self._own.add(seq)
            return expect
        return (seq, seq)

    def _queue_append(
        self,
        client: Any,
        transactions: list[Transaction],
        answers: list[str | None],
        labels: list[int | None],
        *,
        expect: int | None,
        prune_before: int | None,
    ) -> Any:
        contents = [_content(tx) for tx in transactions]
        rows = [
            [tx.transaction_id, tx.time, tx.customer_id, tx.terminal_id, tx.amount, label]
            for tx, label in zip(transactions, labels, strict=True)
        ]
        newest = max(tx.time for tx in transactions)
        args = [
            "" if expect is None else expect,
            orjson.dumps(rows),
            newest // 1000,
            newest,
            "" if prune_before is None else prune_before // 1000,
            len(transactions),
            _touch_keys(transactions),
            *(tx.transaction_id for tx in transactions),
            *contents,
            *("" if answer is None else answer for answer in answers),
            *("" if label is None else label for label in labels),
        ]
        keys = [self.keys[k] for k in
                ("seq", "log", "rows", "answers", "ends", "meta", "fraud", "touch")]  # fmt: skip
        return self._append(keys=keys, args=args, client=client)

    @staticmethod
    def _check_append(outcome: list) -> int:
        status = outcome[0].decode()
        if status == "stale":
            raise StaleError(f"the log moved to {int(outcome[1])}")
        if status == "conflict":
            raise ConflictError(f"transaction_id {outcome[1].decode()} is already stored")
        return int(outcome[1])

    def label(self, labels: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """As ``SQLiteHistory.label``: one script, nothing recorded if one id is unknown."""
        labels = checked_labels(labels)
        if not labels:
            return []
        # each label moves its terminal's features: a round computed before it on that
        # terminal is stale (an unknown id is refused by the script)
        stored = self.lookup(tx_id for tx_id, _ in labels)
        keys = [self.keys[k] for k in ("seq", "log", "rows", "fraud", "ends", "touch")]
        args: list = [int(time.time() * 1000)]
        for tx_id, fraud in labels:
            terminal = stored[tx_id].transaction.terminal_id if tx_id in stored else ""
            args += [tx_id, fraud, "t" + orjson.dumps(terminal).decode()]
        outcome = self._label(keys=keys, args=args)
        if outcome[0] == b"unknown":
            more = int(outcome[2]) - 1
            raise UnknownTransactionError(
                f"no stored transaction {int(outcome[1])}"
                + (f" (and {more} more unknown)" if more else "")
            )
        flat = [int(value) for value in outcome[1]]
        return [tuple(flat[at : at + 3]) for at in range(0, len(flat), 3)]  # type: ignore[misc]

    def changes(self, cursor: tuple[int, int]) -> Changes:
        """Entries after ``cursor``: rows (each with its label as of this read) and the label
        changes of rows read before (row sequence 0: the caller holds the row)."""
        entries: list = []
        while True:
            more = self._redis.xrange(self.keys["log"], min=_after(cursor), count=_CHUNK)
            entries += more
            if len(more) < _CHUNK:
                return _changes(entries, cursor, own=self._own)
            cursor = _position(more[-1][0])

    def cursor(self) -> tuple[int, int]:
        seq = int(self._redis.get(self.keys["seq"]) or 0)
        return (seq, seq)

    def prune(self, *, before: int, limit: int | None = None) -> int:
        """Delete log entries whose rows are all before ``before`` (no window reaches them),
        oldest first, at most ``limit`` entries (None: all); the count of rows deleted."""
        keys = [self.keys[k] for k in ("log", "rows", "answers", "ends", "fraud", "touch")]
        pruned, entries = 0, 0
        while limit is None or entries < limit:
            outcome = int(self._prune(keys=keys, args=[before // 1000]))
            if outcome < 0:
                break
            pruned += outcome
            entries += 1
        return pruned

    def count(self) -> int:
        return int(self._redis.hlen(self.keys["rows"]))

    def newest_time(self) -> int | None:
        newest = self._redis.hget(self.keys["meta"], "newest")
        return None if newest is None else int(newest)

    def memory_bytes(self) -> int:
        """Bytes Redis uses for this store's keys (MEMORY USAGE, every element sampled)."""
        return sum(int(self._redis.memory_usage(key, samples=0) or 0) for key in self.keys.values())

    def persistence(self) -> str:
        """What Redis's persistence promises for an acknowledged write, in one line."""
        try:
            config = self._redis.config_get("appendonly")
            config.update(self._redis.config_get("appendfsync"))
        except ResponseError:  # CONFIG disabled (managed Redis): say so
            return "persistence unknown (CONFIG GET is not allowed): see the serving docs"
        if config.get("appendonly") != "yes":
            return (
                "no AOF (appendonly no): a Redis restart loses what came after its last "
                "snapshot; set appendonly yes"
            )
        return {
            "always": "AOF appendfsync always: acknowledged writes survive kill -9 of Redis and a "
            "power cut",
            "everysec": "AOF appendfsync everysec: acknowledged writes survive kill -9 of Redis; "
            "a power cut can lose about the last second",
        }.get(
            config.get("appendfsync", ""),
            f"AOF appendfsync {config.get('appendfsync')}: a power cut can lose what the "
            "operating system had not written",
        )

    def ping(self) -> None:
        self._redis.ping()
