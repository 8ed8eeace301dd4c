"""Whether the history store can take writes, told fast and once.

A store that was deleted or replaced under the running service, sits on a read-only file
system, or whose disk is (nearly) full, would otherwise be found by SQLite only when a write
fails, after retries and journal work, and once per request. ``StoreHealth`` looks first, with
a ``stat`` and a ``statvfs`` (microseconds), before every write and every half second: while it
reports a problem, ``/readyz`` fails and the write endpoints answer 503 at once with the reason;
a write that fails anyway (a file size limit, an I/O error) makes the problem stick for
``retry_seconds``, then one write tries again. Each incident is logged once when it begins and
once when it ends.

A deleted or replaced store does not recover by itself: the rows the service acknowledged are
in the file it opened, and a restart is where an operator decides what to serve (``fraudlab
serve`` refuses a missing store). A read-only or full disk recovers as soon as it is writable
again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from pathlib import Path

from redis import exceptions as redis_errors

log = logging.getLogger(__name__)

_PROBE_BYTES = 4096


class StoreUnavailableError(Exception):
    """The store cannot take writes now; the message says why."""


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def write_error_reason(path: Path, error: sqlite3.Error) -> str:
    text = str(error)
    kind = "disk full" if "full" in text else "read-only" if "readonly" in text else "write failed"
    return f"{kind}: the store {path}: SQLite says {text!r}"


def kind_of(reason: str) -> str:
    """The reason's first words (deleted, replaced, read-only, disk full, ...), which say what
    is wrong without naming the file: what the open readiness probe shows."""
    return reason.split(":", 1)[0]


class StoreHealth:
    # SQLite's errors mean the write was rolled back; the check is a stat (the event loop may
    # run it)
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    blocking = False

    def __init__(
        self,
        path: str | Path,
        *,
        reserve_bytes: int,
        retry_seconds: float = 1.0,
        on_change: object = None,
    ) -> None:
        self.path = Path(path)
        self.reserve = reserve_bytes
        # the file the service opened (None: not created yet, only its directory is checked)
        self.identity = _identity(self.path) if self.path.exists() else None
        self._healthy(str(path), retry_seconds=retry_seconds, on_change=on_change)

    def _healthy(self, name: str, *, retry_seconds: float, on_change: object) -> None:
        """No incident yet: what every kind of store's health starts from."""
        self.name = name
        self.retry_seconds = retry_seconds
        self.reason: str | None = None
        self._write_error: str | None = None
        self._failed_at = 0.0
        self._on_change = on_change  # called with the new reason (None: healthy)

    def problem(self) -> str | None:
        """What the file system says is wrong with the store, or None."""
        try:
            identity = _identity(self.path)
        except FileNotFoundError:
            return self._because("deleted", "restore it, then restart the service")
        except OSError as exc:
            return self._because("unreadable", exc.strerror or "")
        if identity != self.identity:
            return self._because("replaced", "restart the service to serve the new file")
        if not os.access(self.path, os.W_OK):
            return self._because("read-only", "the file is not writable")
        return self.space_problem()

    def space_problem(self) -> str | None:
        """What the store's file system says (read-only, short of space), or None."""
        directory = os.statvfs(self.path.parent)
        if directory.f_flag & os.ST_RDONLY:
            return self._because("read-only", "its file system is mounted read-only")
        if directory.f_bavail * directory.f_frsize < self.reserve:
            return self._because(
                "disk full",
                f"less than the {self.reserve}-byte reserve is free (--store-reserve-bytes)",
            )
        return None

    def _probe(self) -> str | None:
        """After a failed write, what writing beside the store says (SQLite reports a file
        system gone read-only on errors, or a file size limit, as a generic I/O error)."""
        probe = self.path.with_name(f".{self.path.name}.probe")
        try:
            with open(probe, "wb") as out:
                out.write(bytes(_PROBE_BYTES))
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return self._because("read-only", "its file system turned read-only")
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return self._because("disk full", exc.strerror or "")
            return self._because("write failed", exc.strerror or "")
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def _because(self, kind: str, detail: str) -> str:
        return f"{kind}: the store {self.path}: {detail}"

    def check(self) -> str | None:
        """The reason the store cannot take writes now (None: it can)."""
        reason = self.problem()
        recent = time.monotonic() - self._failed_at < self.retry_seconds
        if reason is None and self._write_error is not None and recent:
            reason = self._write_error  # after retry_seconds, one write tries again
        self._set(reason)
        return reason

    def require(self) -> None:
        """Raise StoreUnavailableError unless the store can take writes."""
        reason = self.check()
        if reason is not None:
            raise StoreUnavailableError(reason)

    def failed(self, error: Exception) -> StoreUnavailableError:
        """Note a failed write; the error to answer with."""
        self._write_error = self._failure_reason(error)
        self._failed_at = time.monotonic()
        self._set(self._write_error)
        return StoreUnavailableError(self._write_error)

    def _failure_reason(self, error: Exception) -> str:
        return self.problem() or self._probe() or write_error_reason(self.path, error)

    def succeeded(self) -> None:
        if self._write_error is not None:
            self._write_error = None
            self._set(self.problem())

    def _set(self, reason: str | None) -> None:
        if reason == self.reason:
            return
        if reason is None:
            log.warning("the history store takes writes again (%s)", self.name)
        elif self.reason is None:
            log.error("the history store cannot take writes: %s; answering 503", reason)
        else:
            log.error("the history store still cannot take writes: %s", reason)
        self.reason = reason
        if callable(self._on_change):
            self._on_change(reason)


def redis_error_reason(name: str, error: Exception) -> str:
    """Why a Redis store refused or failed a write, led by its kind (see ``kind_of``)."""
    text = str(error) or type(error).__name__
    if isinstance(error, redis_errors.ConnectionError | redis_errors.TimeoutError):
        kind = "unreachable"
    elif isinstance(error, redis_errors.OutOfMemoryError) or text.startswith("OOM"):
        kind = "memory full"
    elif isinstance(error, redis_errors.ReadOnlyError):
        kind = "read-only"
    elif isinstance(error, redis_errors.BusyLoadingError):
        kind = "loading"
    elif "MISCONF" in text:
        kind = "persistence failing"
    elif isinstance(error, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        kind = "refused"
    else:
        kind = "write failed"
    return f"{kind}: the store {name}: Redis says {text!r}"


class RedisHealth(StoreHealth):
    """``StoreHealth`` of a Redis store: a PING from the watcher every half second (in a
    thread: a Redis that hangs must not hold the event loop) and the last failed write; a
    write is refused (503) only while one of them says so, so a scoring round costs no extra
    round trip."""

    errors = (redis_errors.RedisError,)
    blocking = True

    def __init__(
        self, store: object, *, retry_seconds: float = 1.0, on_change: object = None
    ) -> None:
        self.store = store
        self._healthy(store.name, retry_seconds=retry_seconds, on_change=on_change)  # type: ignore[attr-defined]

    def problem(self) -> str | None:
        try:
            self.store.ping()  # type: ignore[attr-defined]
        except redis_errors.RedisError as exc:
            return redis_error_reason(self.name, exc)
        return None

    def require(self) -> None:
        recent = time.monotonic() - self._failed_at < self.retry_seconds
        if self._write_error is not None and recent:
            raise StoreUnavailableError(self._write_error)
        if self.reason is not None and self._write_error is None:
            raise StoreUnavailableError(self.reason)  # the watcher's PING failed

    def _failure_reason(self, error: Exception) -> str:
        return redis_error_reason(self.name, error)
