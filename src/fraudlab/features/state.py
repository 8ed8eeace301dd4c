"""Online features from running state: constant work per transaction, whatever a window holds.

The batch kernels (``fraudlab.features.kernels``) stay the definition; this module keeps, per
card and per terminal, what the features need as running sums with expiry, so that scoring a
transaction costs a few operations per window instead of a walk over the card's and terminal's
rows (tests check every group against the kernels).

* A card (``CardState``) keeps its rows of the retention in (time, id) order and, per window
  length, the position of the first row inside ``(now - n, now]`` with the count, a compensated
  sum of the amounts and the count of anomalous payments there; per amount window a monotonic
  queue gives the maximum. A new transaction later than every stored one (the usual case)
  advances each window's start past the rows that left it: each row enters and leaves each
  window once, so the work per transaction is constant on average.
* A terminal (``TerminalState``) keeps its rows and labels; its windows end at the known-label
  frontier ``t - d`` and start ``n`` days before it, with running counts and fraud counts, and
  the run of known frauds ending at the frontier. A label that changes moves each window's
  fraud count by one (the row is found by id); one behind the frontier also re-reads the run
  (as far back as the run goes).
* A transaction earlier than its card's or terminal's newest row (late, inside the accepted
  window) is scored from a replay of the rows before it, and its card or terminal is replayed
  once it is inserted: correct, at a cost that grows with the rows kept. The service counts them
  (``fraudlab_late_transactions_total``).

Rules are the kernels' (SPEC section 4): customer windows ``(t - n, t]`` with the transaction
itself, the amount groups over the earlier payments ``(t - n, t)``, terminal windows
``(t - d - n, t - d]``; rows ordered by (time, id); a row at ``t - n`` exactly is outside.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams
from fraudlab.features.kernels import (
    NS_PER_DAY,
    SATURDAY,
    _last_payments,
    _row_median,
    _window_bounds,
)
from fraudlab.features.names import (
    KNOWN_LABEL_FEATURES,
    customer_feature_names,
    feature_names,
    group_feature_names,
    terminal_feature_names,
)

_NAN = float("nan")


class _Sum:
    """A running sum with Neumaier's compensation: adding and removing values for months keeps
    the error near one rounding, where a plain running sum drifts."""

    __slots__ = ("compensation", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.compensation = 0.0

    def add(self, value: float) -> None:
        total = self.total + value
        if abs(self.total) >= abs(value):
            self.compensation += (self.total - total) + value
        else:
            self.compensation += (value - total) + self.total
        self.total = total

    def value(self) -> float:
        return self.total + self.compensation


@dataclass
class _Window:
    """Rows ``start`` (absolute position) to the newest row inside one window length."""

    length: int  # ns
    start: int = 0
    amounts: _Sum = field(default_factory=_Sum)
    anomalies: int = 0
    maxima: deque[int] | None = None  # positions, amounts decreasing (amount windows only)


class _Plan:
    """Which window lengths a card needs, and the column names, from the feature params."""

    def __init__(self, params: FeaturesParams) -> None:
        day = NS_PER_DAY
        self.groups = frozenset(params.groups)
        self.customer = tuple(n * day for n in params.customer_windows_days)
        self.amount = tuple(n * day for n in params.amount_windows_days)
        self.anomaly = tuple(n * day for n in params.anomaly_windows_days)
        needed = set(self.customer)
        if {"amount_ratios", "last_payments", "anomaly_counts"} & self.groups:
            needed |= {max(self.amount)}
        if "amount_ratios" in self.groups:
            needed |= set(self.amount)
        if "anomaly_counts" in self.groups:
            needed |= set(self.anomaly)
        self.lengths = tuple(sorted(needed))
        self.look_back = max(self.amount)  # of the last payments' statistics
        self.last = params.last_payments
        self.factor = params.anomaly_factor
        names = customer_feature_names(params.customer_windows_days)
        self.customer_names = list(zip(names[::2], names[1::2], strict=True))
        self.group_names = group_feature_names(params)
        ratios = self.group_names["amount_ratios"]
        self.ratio_names = list(zip(ratios[::2], ratios[1::2], strict=True))


def _median(values: list[float]) -> float:
    """As ``kernels._row_median`` computes it for one row."""
    if not values:
        return _NAN
    ordered = sorted(values)
    count = len(ordered)
    return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2


def _zscore(amount: float, values: list[float]) -> float:
    """As ``kernels._row_zscore`` computes it for one row: sums in the columns' order (latest
    first; the absent columns add 0, which changes no sum)."""
    count = len(values)
    total = 0.0
    for value in values:
        total = total + value
    mean = total / max(count, 1)
    squares = 0.0
    for value in values:
        squares = squares + (value - mean) * (value - mean)
    std = math.sqrt(squares / max(count - 1, 1))
    return (amount - mean) / std if count >= 2 and std > 0 else 0.0


def _ratio(amount: float, baseline: float) -> float:
    return amount / baseline if baseline > 0 else 1.0  # NaN > 0 is False


class _Rows:
    """What a card and a terminal share: rows in (time, id) order from absolute position
    ``base``, each with a value (an amount, a label)."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.times)

    def is_next(self, time: int, transaction_id: int) -> bool:
        """Whether (time, id) comes after every stored row (the constant-time case)."""
        return not self.times or (time, transaction_id) > (self.times[-1], self.ids[-1])


class CardState(_Rows):
    """One card's rows and running windows (see the module's docstring)."""

    __slots__ = ("amounts", "base", "flags", "ids", "plan", "times", "windows")

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.base = 0  # absolute position of times[0]
        # typed arrays: 8 bytes a value, where a list of Python numbers takes about 40
        self.times = array("q")
        self.ids = array("q")
        self.amounts = array("d")
        self.flags = array("b")  # 1 where a payment was anomalous
        self.windows = [
            _Window(n, maxima=deque() if n in plan.amount else None) for n in plan.lengths
        ]

    def rows(self) -> list[tuple[int, int, float]]:
        return list(zip(self.times, self.ids, self.amounts, strict=True))

    def empty_like(self) -> CardState:
        return CardState(self.plan)

    def append(
        self, time: int, transaction_id: int, amount: float, *, features: bool = True
    ) -> dict[str, float]:
        """Add a transaction later than every stored row; its features (card ones), unless
        told they are not wanted (a row another process scored: only the state moves)."""
        base, times, amounts = self.base, self.times, self.amounts
        end = base + len(times)  # the new row's position
        for window in self.windows:
            edge = time - window.length
            start = window.start
            while start < end and times[start - base] <= edge:
                window.amounts.add(-amounts[start - base])
                window.anomalies -= self.flags[start - base]
                start += 1
            window.start = start
            if window.maxima is not None:
                maxima = window.maxima
                while maxima and maxima[0] < start:
                    maxima.popleft()
        out: dict[str, float] = {}
        by_length = {window.length: window for window in self.windows}
        flag = self._flag(amount, end, by_length, out if features else None)
        if features:
            self._features(amount, end, by_length, out)
        times.append(time)
        self.ids.append(transaction_id)
        amounts.append(amount)
        self.flags.append(flag)
        for window in self.windows:
            window.amounts.add(amount)
            window.anomalies += flag
            if window.maxima is not None:
                maxima = window.maxima
                while maxima and amounts[maxima[-1] - base] <= amount:
                    maxima.pop()
                maxima.append(end)
        return out

    def _flag(self, amount: float, end: int, by_length: dict, out: dict | None) -> int:
        """Whether the payment is anomalous against the last ones (what the state keeps), and
        into ``out`` (if given) the last payments' and anomaly counts' features."""
        plan, base, amounts = self.plan, self.base, self.amounts
        if not {"last_payments", "anomaly_counts"} & plan.groups:
            return 0
        first = by_length[plan.look_back].start
        last = [amounts[p - base] for p in range(end - 1, max(first, end - plan.last) - 1, -1)]
        median = _median(last)
        flag = int(amount > plan.factor * median)  # False against NaN
        if out is None:
            return flag
        group_names = plan.group_names
        if "last_payments" in plan.groups:
            median_name, zscore_name = group_names["last_payments"]
            out[median_name] = _ratio(amount, median)
            out[zscore_name] = _zscore(amount, last)
        if "anomaly_counts" in plan.groups:
            for n, name in zip(plan.anomaly, group_names["anomaly_counts"], strict=True):
                out[name] = by_length[n].anomalies + flag
        return flag

    def _features(self, amount: float, end: int, by_length: dict, out: dict) -> None:
        """The window counts, means and amount ratios of a payment at position ``end``."""
        plan, base, amounts = self.plan, self.base, self.amounts
        for n, (count_name, mean_name) in zip(plan.customer, plan.customer_names, strict=True):
            window = by_length[n]
            count = end - window.start + 1
            out[count_name] = count
            out[mean_name] = (window.amounts.value() + amount) / count
        if "amount_ratios" in plan.groups:
            for n, (mean_name, max_name) in zip(plan.amount, plan.ratio_names, strict=True):
                window = by_length[n]
                earlier = end - window.start
                mean = window.amounts.value() / earlier if earlier else _NAN
                top = amounts[window.maxima[0] - base] if window.maxima else _NAN
                out[mean_name] = _ratio(amount, mean)
                out[max_name] = _ratio(amount, top)

    def forget(self, before: int) -> None:
        """Drop the rows at or before ``before``, which no transaction still accepted can
        reach (``before`` is the service's now minus its retention): the windows move past
        them first, as later appends would."""
        drop = bisect_right(self.times, before)
        cut = self.base + drop
        for window in self.windows:
            while window.start < cut:
                window.amounts.add(-self.amounts[window.start - self.base])
                window.anomalies -= self.flags[window.start - self.base]
                window.start += 1
            if window.maxima is not None:
                while window.maxima and window.maxima[0] < window.start:
                    window.maxima.popleft()
        if drop:
            del self.times[:drop], self.ids[:drop], self.amounts[:drop], self.flags[:drop]
            self.base = cut


class TerminalState(_Rows):
    """One terminal's rows, labels and running windows behind the known-label frontier."""

    __slots__ = ("base", "begins", "delay", "end", "frauds", "ids", "labels", "last_fraud",
                 "last_legit", "lengths", "names", "times", "with_runs")  # fmt: skip

    def __init__(self, params: FeaturesParams) -> None:
        self.delay = params.label_delay_days * NS_PER_DAY
        self.lengths = [n * NS_PER_DAY for n in params.terminal_windows_days]
        self.with_runs = "known_labels" in params.groups
        names = terminal_feature_names(params.terminal_windows_days)
        self.names = list(zip(names[::2], names[1::2], strict=True))
        self._empty()

    def empty_like(self) -> TerminalState:
        fresh = TerminalState.__new__(TerminalState)
        fresh.delay, fresh.lengths, fresh.with_runs = self.delay, self.lengths, self.with_runs
        fresh.names = self.names
        fresh._empty()
        return fresh

    def rows(self) -> list[tuple[int, int, int]]:
        return list(zip(self.times, self.ids, self.labels, strict=True))

    def _empty(self) -> None:
        self.base = 0
        self.times = array("q")
        self.ids = array("q")
        self.labels = array("b")  # 0 until a fraud label is known
        self.end = 0  # the first row after the frontier t - d
        self.begins = [0] * len(self.lengths)  # per window, the first row after t - d - n
        self.frauds = [0] * len(self.lengths)
        self.last_legit = -1  # positions behind the frontier (-1: none)
        self.last_fraud = -1

    def _label(self, position: int) -> int:
        return self.labels[position - self.base]

    def append(
        self, time: int, transaction_id: int, label: int | None, *, features: bool = True
    ) -> dict[str, float]:
        """Add a transaction later than every stored row (its label, if already known); its
        features (terminal ones), unless not wanted."""
        base, times = self.base, self.times
        stored_end = base + len(times)
        frontier = time - self.delay
        end = self.end
        while end < stored_end and times[end - base] <= frontier:
            fraud = self.labels[end - base]
            for k in range(len(self.lengths)):
                self.frauds[k] += fraud
            if fraud:
                self.last_fraud = end
            else:
                self.last_legit = end
            end += 1
        self.end = end
        for k, length in enumerate(self.lengths):
            begin, edge = self.begins[k], frontier - length
            while begin < end and times[begin - base] <= edge:
                self.frauds[k] -= self.labels[begin - base]
                begin += 1
            self.begins[k] = begin
        out: dict[str, float] = {}
        for k, (count_name, risk_name) in enumerate(self.names if features else ()):
            count = end - self.begins[k]
            out[count_name] = count
            out[risk_name] = self.frauds[k] / count if count > 0 else 0.0
        if self.with_runs and features:
            out |= self._runs(time)
        times.append(time)
        self.ids.append(transaction_id)
        self.labels.append(1 if label == 1 else 0)
        return out

    def _runs(self, time: int) -> dict[str, float]:
        """The known-label features at ``time`` (``kernels.known_labels`` for one row)."""
        begin = self.begins[self.lengths.index(max(self.lengths))]
        end = self.end
        look_back = self.delay + max(self.lengths)
        known = end > begin
        last = end - 1
        run_start = max(self.last_legit + 1, begin)
        run_length = end - run_start if known else 0
        in_run = run_length > 0
        seen_fraud = known and self.last_fraud >= begin
        return dict(
            zip(
                KNOWN_LABEL_FEATURES,
                (
                    int(known and self._label(last) == 1),
                    run_length,
                    (time - self.times[run_start - self.base]) / NS_PER_DAY if in_run else 0,
                    (time - self.times[self.last_fraud - self.base]) / NS_PER_DAY
                    if seen_fraud
                    else look_back / NS_PER_DAY,
                ),
                strict=True,
            )
        )

    def set_label(self, transaction_id: int, time: int, fraud: int | None) -> bool:
        """A label known now; False if the row is not held (pruned, or never seen)."""
        first = bisect_left(self.times, time)
        last = bisect_right(self.times, time)
        at = next((k for k in range(first, last) if self.ids[k] == transaction_id), None)
        if at is None:
            return False
        position = self.base + at
        old = self.labels[position - self.base]
        new = 1 if fraud == 1 else 0
        if old == new:
            return True
        self.labels[position - self.base] = new
        if position < self.end:  # behind the frontier: inside windows, and in the runs
            for k, begin in enumerate(self.begins):
                if begin <= position:
                    self.frauds[k] += new - old
            self._reread_runs()
        return True

    def _reread_runs(self) -> None:
        """The latest legitimate and fraud rows behind the frontier, read back from it (as far
        as the first of each, or the oldest row held)."""
        self.last_legit = self.last_fraud = -1
        position = self.end - 1
        while position >= self.base and (self.last_legit < 0 or self.last_fraud < 0):
            if self.labels[position - self.base]:
                if self.last_fraud < 0:
                    self.last_fraud = position
            elif self.last_legit < 0:
                self.last_legit = position
            position -= 1

    def forget(self, before: int) -> None:
        """As ``CardState.forget``: the frontier and the windows' starts move past the rows
        dropped first, as later appends would."""
        drop = bisect_right(self.times, before)
        cut = self.base + drop
        while self.end < cut:
            fraud = self.labels[self.end - self.base]
            for k in range(len(self.lengths)):
                self.frauds[k] += fraud
            if fraud:
                self.last_fraud = self.end
            else:
                self.last_legit = self.end
            self.end += 1
        for k in range(len(self.lengths)):
            while self.begins[k] < cut:
                self.frauds[k] -= self.labels[self.begins[k] - self.base]
                self.begins[k] += 1
        if drop:
            del self.times[:drop], self.ids[:drop], self.labels[:drop]
            self.base = cut


def calendar(time: int, night_end_hour: int) -> tuple[int, int]:
    """(tx_during_weekend, tx_during_night) as ``online._calendar`` computes them."""
    days, rest = divmod(time, NS_PER_DAY)
    return int((days + 3) % 7 >= SATURDAY), int(rest // (3600 * 10**9) <= night_end_hour)


def plan_of(params: FeaturesParams) -> _Plan:
    return _Plan(params)


def replay(frame: pd.DataFrame, params: FeaturesParams) -> pd.DataFrame:
    """Every row's features computed by the running state, the rows taken one at a time in
    (time, id) order with their labels known at once (as the batch reads them): what the tests
    hold against the batch kernels. Columns in ``feature_names`` order, rows in ``frame``'s."""
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ids = frame[schema.TRANSACTION_ID].to_numpy(dtype=np.int64)
    amounts = frame[schema.TX_AMOUNT].to_numpy(dtype=np.float64)
    customers = frame[schema.CUSTOMER_ID].to_numpy()
    terminals = frame[schema.TERMINAL_ID].to_numpy()
    labels = (frame[schema.TX_FRAUD].fillna(0).to_numpy(dtype=np.int64)
              if schema.TX_FRAUD in frame else np.zeros(len(frame), dtype=np.int64))  # fmt: skip
    states = States(params)
    out = np.empty((len(frame), len(states.names)))
    for row in np.lexsort((ids, times)).tolist():
        values = states.add(int(times[row]), int(ids[row]), customers[row], terminals[row],
                            float(amounts[row]), int(labels[row]))  # fmt: skip
        out[row] = states.row(values)
    return pd.DataFrame(out, columns=states.names, index=frame.index)


def _replayed(state, rows: list[tuple], target: tuple | None):
    """A state of the same kind from ``rows`` (time, id, value) in order; the features of
    ``target``'s row (its (time, id)) as it is appended, if given."""
    fresh = state.empty_like()
    found: dict[str, float] = {}
    for time, tx_id, value in rows:
        wanted = (time, tx_id) == target
        values = fresh.append(time, tx_id, value, features=wanted)
        if wanted:
            found = values
    return fresh, found


def with_row(state, time: int, tx_id: int, value, *, features: bool = True):
    """(the card or terminal with a new row, the row's features, or {} when not wanted):
    appended when it comes last, else replayed with the row in its place (a late
    transaction: work grows with the rows kept)."""
    if state.is_next(time, tx_id):
        return state, state.append(time, tx_id, value, features=features)
    target = (time, tx_id) if features else None
    return _replayed(state, sorted([*state.rows(), (time, tx_id, value)]), target)


def without_rows(state, ids: set[int]):
    """The card or terminal replayed without the rows of ``ids`` (a write that failed)."""
    return _replayed(state, [row for row in state.rows() if row[1] not in ids], None)[0]


class States:
    """Every card's and terminal's state, and the features of a transaction from them."""

    def __init__(self, params: FeaturesParams) -> None:
        self.params = params
        self.plan = plan_of(params)
        self.names = feature_names(params)
        self.cards: dict = {}
        self.places: dict = {}

    def add(
        self, time: int, tx_id: int, customer, terminal, amount: float, label: int | None
    ) -> dict[str, float]:
        """Take a transaction in (a late one replays its card or terminal); its features."""
        card = self.cards.get(customer) or CardState(self.plan)
        place = self.places.get(terminal) or TerminalState(self.params)
        self.cards[customer], values = with_row(card, time, tx_id, amount)
        self.places[terminal], more = with_row(place, time, tx_id, label)
        values |= more
        values[schema.TX_AMOUNT] = amount
        values["tx_during_weekend"], values["tx_during_night"] = calendar(
            time, self.params.night_end_hour
        )
        return values

    def take(self, time: int, tx_id: int, customer, terminal, amount: float, label: int | None):
        """Take a transaction in without its features (a row another process scored): the
        same state as ``add`` leaves, for less work."""
        card = self.cards.get(customer) or CardState(self.plan)
        place = self.places.get(terminal) or TerminalState(self.params)
        self.cards[customer] = with_row(card, time, tx_id, amount, features=False)[0]
        self.places[terminal] = with_row(place, time, tx_id, label, features=False)[0]

    def row(self, values: dict[str, float]) -> list[float]:
        """Features in ``feature_names`` order."""
        return [values[name] for name in self.names]

    def without(self, customers, terminals, ids: set[int]) -> None:
        for key in customers:
            self.cards[key] = without_rows(self.cards[key], ids)
        for key in terminals:
            self.places[key] = without_rows(self.places[key], ids)


def _sorted_groups(keys: list, times: np.ndarray, ids: np.ndarray):
    """Rows sorted by (group, time, id): (the order, group codes in that order, the keys by
    code, each group's first and last positions)."""
    codes, distinct = pd.factorize(pd.Series(keys, dtype=object), sort=False)
    order = np.lexsort((ids, times, codes))
    groups = codes[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    return order, groups, list(distinct), starts, ends


def bulk_cards(
    keys: list, times: np.ndarray, ids: np.ndarray, amounts: np.ndarray, params: FeaturesParams
) -> dict:
    """Every card's state after its rows, built with array operations (the rows need not be
    in any order): what appending them one by one would give, at a fraction of the cost."""
    if not len(keys):
        return {}
    plan = plan_of(params)
    order, groups, distinct, starts, ends = _sorted_groups(keys, times, ids)
    times, ids, amounts = times[order], ids[order], amounts[order]
    at_or_before = _window_bounds(groups, times)
    flags = np.zeros(len(times), dtype=np.int8)
    if {"last_payments", "anomaly_counts"} & plan.groups:
        last = _last_payments(amounts, position=np.arange(len(times)),
                              first=at_or_before(plan.look_back), k=plan.last)  # fmt: skip
        flags = (amounts > plan.factor * _row_median(last)).astype(np.int8)
    # sums restarting at each card: a global running sum would lose digits over millions
    within = pd.Series(amounts).groupby(groups).cumsum().to_numpy()
    anomalies = np.r_[0, np.cumsum(flags, dtype=np.int64)]
    newest = ends - 1
    window_starts = {n: at_or_before(n, newest) for n in plan.lengths}
    # the monotonic queues: rows greater than every later row of their card
    later_max = pd.Series(amounts[::-1]).groupby(groups[::-1]).cummax().to_numpy()[::-1]
    after = np.r_[later_max[1:], -np.inf]
    after[ends - 1] = -np.inf
    peaks = np.flatnonzero(amounts > after)
    cards = {}
    for g, key in enumerate(distinct):
        first, end = int(starts[g]), int(ends[g])
        card = CardState(plan)
        card.times = array("q", times[first:end].tolist())
        card.ids = array("q", ids[first:end].tolist())
        card.amounts = array("d", amounts[first:end].tolist())
        card.flags = array("b", flags[first:end].tolist())
        card.base = 0
        for window in card.windows:
            start = int(window_starts[window.length][g])
            window.start = start - first
            window.amounts.total = float(within[end - 1] - (within[start - 1] if start > first
                                                             else 0.0))  # fmt: skip
            window.anomalies = int(anomalies[end] - anomalies[start])
            if window.maxima is not None:
                lo, hi = np.searchsorted(peaks, [start, end])
                window.maxima = deque((peaks[lo:hi] - first).tolist())
        cards[key] = card
    return cards


def _within(latest: np.ndarray, at: int, first: int) -> int:
    """``latest[at]`` (a global position) as a position in the group starting at ``first``,
    or -1 when it is in an earlier group or there is none."""
    position = int(latest[at]) if at >= first else -1
    return position - first if position >= first else -1


def bulk_places(
    keys: list, times: np.ndarray, ids: np.ndarray, labels: np.ndarray, params: FeaturesParams
) -> dict:
    """Every terminal's state after its rows (labels as known), as ``bulk_cards``."""
    if not len(keys):
        return {}
    order, groups, distinct, starts, ends = _sorted_groups(keys, times, ids)
    times, ids, labels = times[order], ids[order], labels[order].astype(np.int8)
    at_or_before = _window_bounds(groups, times)
    delay = params.label_delay_days * NS_PER_DAY
    newest = ends - 1
    frontier = at_or_before(delay, newest)
    begins = [at_or_before(delay + n * NS_PER_DAY, newest) for n in params.terminal_windows_days]
    frauds = np.r_[0, np.cumsum(labels, dtype=np.int64)]
    index = np.arange(len(times))
    last_legit = np.maximum.accumulate(np.where(labels == 0, index, -1))
    last_fraud = np.maximum.accumulate(np.where(labels == 1, index, -1))
    places = {}
    for g, key in enumerate(distinct):
        first, end = int(starts[g]), int(ends[g])
        place = TerminalState(params)
        place.times = array("q", times[first:end].tolist())
        place.ids = array("q", ids[first:end].tolist())
        place.labels = array("b", labels[first:end].tolist())
        stop = int(frontier[g])
        place.end = stop - first
        place.begins = [int(b[g]) - first for b in begins]
        place.frauds = [int(frauds[stop] - frauds[int(b[g])]) for b in begins]
        place.last_legit = _within(last_legit, stop - 1, first)
        place.last_fraud = _within(last_fraud, stop - 1, first)
        places[key] = place
    return places
