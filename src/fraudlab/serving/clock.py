"""Which transaction times the service accepts, and how long it keeps rows: time is bounded by
the store and the server, never by a client.

The service's *now* is this machine's clock (``system``, for live traffic) or the store's
watermark, the newest transaction time it holds (``data``, for replays of past data such as the
simulator's 2018). A new transaction is accepted when its time lies in
``[now - late, now + ahead]`` (and not before ``earliest``, nor ``ahead`` past this machine's
clock whatever the clock). With the data clock the watermark moves only with accepted
transactions, one bounded step at a time: a transaction ``ahead`` past the watermark moves it by
``ahead`` at most, and a wrongly dated one is refused instead of moving it years.

Retention follows: a row is deleted once it is older than ``now - longest window - late``. A
transaction accepted at ``t >= now - late`` reads rows after ``t - longest window``, all still
stored, and stays stored, answerable and labellable until the windows of every transaction that
can still be accepted have passed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

SOURCES = ("system", "data")


def duration_ns(text: str) -> int:
    """A duration such as ``5min``, ``1h`` or ``1 day`` (pandas' Timedelta forms) in ns."""
    try:
        value = pd.Timedelta(text)
    except (ValueError, TypeError):
        raise ValueError(f"{text!r} is not a duration (e.g. 5min, 1h, 1 day)") from None
    if value is pd.NaT or value < pd.Timedelta(0):
        raise ValueError(f"{text!r} is not a duration of zero or more")
    return int(value.value)


def show_time(ns: int) -> str:
    return pd.Timestamp(ns).isoformat()


_UNITS = (("day", 86_400 * 10**9), ("h", 3600 * 10**9), ("min", 60 * 10**9), ("s", 10**9))


def show_duration(ns: int) -> str:
    """``ns`` as the largest whole unit, e.g. ``1 day``, ``5min``, ``90s``."""
    for name, size in _UNITS:
        if ns and ns % size == 0:
            count = ns // size
            return (
                f"{count} {name}{'s' if count > 1 else ''}" if name == "day" else f"{count}{name}"
            )
    return f"{ns}ns"


@dataclass(frozen=True)
class Clock:
    """The accepted window's rule (see the module's docstring); times in int64 ns, naive UTC."""

    source: str  # "system" or "data"
    ahead: int
    late: int
    earliest: int
    system_ns: Callable[[], int] = field(default=time.time_ns, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"clock {self.source!r} is not one of {SOURCES}")

    def now(self, watermark: int | None) -> int | None:
        """The service's now; None with the data clock on an empty store."""
        return self.system_ns() if self.source == "system" else watermark

    def window(self, watermark: int | None) -> Window:
        """The times a new transaction may have, given the store's watermark."""
        system = self.system_ns()
        now = self.now(watermark)
        lowest = self.earliest if now is None else max(self.earliest, now - self.late)
        return Window(self, lowest=lowest, mark=now, ceiling=system + self.ahead)

    def describe(self) -> str:
        if self.source == "system":
            return "this machine's clock"
        return "the data clock (the newest stored transaction)"


@dataclass
class Window:
    """The accepted range, its top moving with each accepted transaction (data clock)."""

    clock: Clock
    lowest: int
    mark: int | None  # the clock's now: accepted times reach ``ahead`` past it
    ceiling: int  # this machine's clock plus ``ahead``, whatever the clock

    def highest(self) -> int:
        if self.mark is None:
            return self.ceiling
        return min(self.ceiling, self.mark + self.clock.ahead)

    def refusal(self, time_ns: int) -> str | None:
        """Why a transaction at ``time_ns`` is refused, or None (accepted)."""
        if self.lowest <= time_ns <= self.highest():
            return None
        side = "older than" if time_ns < self.lowest else "later than"
        return (
            f"tx_datetime {show_time(time_ns)} is {side} the accepted window "
            f"{show_time(self.lowest)} .. {show_time(self.highest())} (from {self.clock.describe()}"
            f": at most --max-late {show_duration(self.clock.late)} behind and --max-ahead "
            f"{show_duration(self.clock.ahead)} ahead)"
        )

    def accept(self, time_ns: int) -> None:
        if self.clock.source == "data" and (self.mark is None or time_ns > self.mark):
            self.mark = time_ns
