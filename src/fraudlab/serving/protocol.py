"""uvicorn's httptools protocol with the bounds a server facing clients needs, which uvicorn's
defaults do not set (docs/serving.md, "Bounded requests"):

* the head of a request (request line and headers) is limited in bytes and in lines, counted on
  the raw bytes before the parser sees them: past a limit the answer is a 431, without parsing
  what follows (a 64 MiB header otherwise costs seconds of CPU in the parser);
* deadlines: the head must arrive within ``header_timeout`` of its first byte, a body within
  ``body_timeout`` of the head, and no request may stay silent for ``idle_timeout``; past one a
  started request gets a 408, a connection that sent nothing is closed;
* at most ``max_connections`` connections per process: one more is answered 503 and closed at
  once, so slow clients cannot exhaust the process's file descriptors;
* a connection serves at most ``max_requests`` requests (then ``Connection: close``);
* a lingering close: when the server closes while the client is still sending (a 413 or 431
  answered early), it half-closes and reads and drops the rest for up to ``linger_seconds``, so
  that the client reads the answer instead of a connection reset (as nginx and Apache do).

Answers given here never reach the application, so they are counted on ``/metrics`` through the
``Guard`` (``Guard.refused``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
# the scope key through which an answer given here reaches the Guard's metrics
REFUSED_STATUS = "fraudlab.refused_status"


@dataclass(frozen=True)
class Limits:
    """The bounds on a client's requests (``fraudlab serve`` flags, seconds and bytes)."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    keep_alive_timeout: float = 5.0
    max_requests: int = 1000
    max_connections: int = 1000
    linger_seconds: float = 2.0


def _answer(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
    ) + body


class _LingeringTransport:
    """The transport with ``close`` deferred while a request's bytes are still arriving."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_lingering()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _guard_of(app: Any) -> Any:
    """The fraudlab Guard inside uvicorn's middleware wrappers (it holds the limits)."""
    while app is not None and not hasattr(app, "limits"):
        app = getattr(app, "app", None)
    if app is None:
        raise RuntimeError("BoundedProtocol serves the fraudlab application only")
    return app


class BoundedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the bounds of the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = _guard_of(self.app)
        self.limits: Limits = self.guard.limits
        self.timeout_keep_alive = self.limits.keep_alive_timeout
        self._raw: asyncio.Transport | None = None
        self._in_head = True  # reading a request's head (or waiting for one to begin)
        self._head_bytes = 0
        self._head_lines = 0
        self._tail = b""  # the last bytes of the head read so far, to find its end
        self._receiving = False  # a request begun whose body has not all arrived
        self._requests = 0
        self._phase_deadline: float | None = None  # the head's or the body's deadline
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._started = time.perf_counter()

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            # closed at once, without lingering: the point is to give the descriptor back
            self.guard.refused(503)
            transport.write(_answer(503, "too many connections; retry shortly"))
            transport.close()
            return
        # a connection that never sends a byte is held no longer than a slow head
        self._set_deadline(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def close_lingering(self) -> None:
        """Close, but first drain what the client is still sending (see the docstring)."""
        raw = self._raw
        if raw is None or raw.is_closing() or self._lingering:
            return
        if not self._receiving or not raw.can_write_eof():
            raw.close()
            return
        self._lingering = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        raw.write_eof()
        raw.resume_reading()
        self.loop.call_later(self.limits.linger_seconds, raw.close)

    # data

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # drained
        self._last_data = self.loop.time()
        if self._in_head:
            if self._phase_deadline is None:  # a new request on a kept-alive connection
                self._set_deadline(self.limits.header_timeout)
            self._receiving = True
        if self._timer is not None and self._timer.when() > self._next_check():
            # the silence allowed from now ends before the phase's deadline: check then
            self._cancel_timer()
            self._timer = self.loop.call_at(self._next_check(), self._check_deadlines)
        if self._in_head and not self._within_head_limits(data):
            return
        super().data_received(data)

    def _within_head_limits(self, data: bytes) -> bool:
        seen = self._tail + data
        end = seen.find(b"\r\n\r\n")
        head = data if end < 0 else data[: max(0, end + 4 - len(self._tail))]
        self._head_bytes += len(head)
        self._head_lines += head.count(b"\n")
        self._tail = seen[-3:]
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request head larger than {self.limits.max_header_bytes} bytes")
            return False
        if self._head_lines > self.limits.max_headers + 2:  # the request line, the blank line
            self._refuse(431, f"more than {self.limits.max_headers} header lines")
            return False
        return True

    # the parser's callbacks

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = self._head_lines = 0
        self._tail = b""
        self._requests += 1
        super().on_headers_complete()
        if self._requests >= self.limits.max_requests and self.cycle is not None:
            self.cycle.keep_alive = False
        self._set_deadline(self.limits.body_timeout)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._receiving = False
        self._set_deadline(None)
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    # deadlines

    def _set_deadline(self, seconds: float | None) -> None:
        self._phase_deadline = None if seconds is None else self.loop.time() + seconds
        if seconds is not None and self._timer is None:
            self._timer = self.loop.call_at(self._next_check(), self._check_deadlines)
        elif seconds is None:
            self._cancel_timer()

    def _next_check(self) -> float:
        deadline = self._phase_deadline or self.loop.time()
        if self._receiving:
            deadline = min(deadline, self._last_data + self.limits.idle_timeout)
        return deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadlines(self) -> None:
        self._timer = None
        if self._phase_deadline is None or self._raw is None or self._raw.is_closing():
            return
        due = self._next_check()
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_deadlines)
            return
        if not self._receiving:  # nothing of a request arrived: an idle connection
            self._raw.close()
            return
        cycle = self.cycle if not self._in_head else None
        if cycle is not None and cycle.response_started:
            self.close_lingering()  # answered early (e.g. 413); the body never finished
            return
        self._refuse(408, "request not received in time")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` here, count it, and close (lingering)."""
        self._cancel_timer()
        self._phase_deadline = None
        if self.cycle is not None and not self._in_head and not self.cycle.response_complete:
            # the application is waiting for the body: it records this status when it sees
            # the connection go
            self.scope[REFUSED_STATUS] = status
        else:
            self.guard.refused(status)
        if self._raw is not None and not self._raw.is_closing():
            self._raw.write(_answer(status, message))
            self._receiving = True  # whatever is still arriving is drained
            self.close_lingering()
