"""Point-in-time correct features, one code path for batch training and online scoring.

Rules (SPEC section 4), for a transaction at time t:

* customer windows of n days cover (t - n, t] and include the transaction itself;
* terminal windows of n days with label delay d cover (t - d - n, t - d]: only labels known by
  t - d enter, the transaction's own label never does; an unknown (missing) label counts as
  legitimate, as it would for a live system;
* same-timestamp rule: rows are ordered by (tx_datetime, transaction_id); a row's customer windows
  include same-timestamp transactions of that customer with a smaller id and exclude those with a
  larger one. Ids follow arrival order, so this is exactly what an online scorer sees when it
  scores transactions one at a time, and row order in the input never matters.

The groups of ``features.groups`` follow the same rules: the amount against the card's earlier
payments (the current one never enters its own baseline; windows (t - n, t)), and what the
terminal's labels known by t - d say about it now. Each looks back a fixed span
(``history_needed``), never over "all earlier payments", so the online scorer's history stays
bounded.

The kernels work on plain arrays sorted by (group, time, id) and never look at another group's
rows, so they run unchanged per partition of a frame split by customer or by terminal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams
from fraudlab.features.names import (
    KNOWN_LABEL_FEATURES,
    customer_feature_names,
    group_feature_names,
    terminal_feature_names,
)

NS_PER_DAY = 86_400 * 10**9
_FEW_RANGES = 64  # below this many, _range_max slices instead of building a sparse table
SATURDAY = 5


def _window_bounds(groups: np.ndarray, times: np.ndarray) -> Callable[..., np.ndarray]:
    """Rows are sorted by (group, time). Return ``at_or_before(offset, rows=None)`` giving, for
    each row i (of ``rows``, default all), the number of rows with
    (group, time) <= (groups[i], times[i] - offset): the index of the first row after that point.

    Times are replaced by their rank among the distinct times, which makes
    ``group * stride + rank`` one sorted int64 key: exact for any times, and every lookup is a
    binary search with sorted queries (cache-friendly).
    """
    n = len(times)
    by_time = np.argsort(times, kind="stable")
    sorted_times = times[by_time]
    is_new = np.ones(n, dtype=bool)
    is_new[1:] = sorted_times[1:] != sorted_times[:-1]
    distinct = sorted_times[is_new]
    stride = len(distinct) + 1
    if n and int(groups[-1]) >= np.iinfo(np.int64).max // stride:
        raise OverflowError("too many groups x distinct timestamps for an int64 key")

    def keys(offset: int) -> np.ndarray:
        ranks = np.empty(n, dtype=np.int64)
        ranks[by_time] = np.searchsorted(distinct, sorted_times - offset, side="right")
        return groups * stride + ranks

    row_keys = keys(0)

    def at_or_before(offset: int, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            return np.searchsorted(row_keys, keys(offset), side="right")
        # only the rows asked for (the online scorer's new transactions among stored ones)
        ranks = np.searchsorted(distinct, times[rows] - offset, side="right")
        return np.searchsorted(row_keys, groups[rows] * stride + ranks, side="right")

    return at_or_before


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """For sorted ``groups``, the index of the first row of each row's group."""
    index = np.arange(len(groups))
    is_start = np.ones(len(groups), dtype=bool)
    is_start[1:] = groups[1:] != groups[:-1]
    return np.maximum.accumulate(np.where(is_start, index, 0))


def customer_windows(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    amounts: np.ndarray,
    windows_days: list[int],
    cumulative: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    at_or_before: Callable[..., np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Count and mean amount over (t - n, t], current row included. Inputs sorted by
    (group, time, transaction_id); outputs aligned with the inputs, or with ``rows`` (positions)
    when given: the online scorer asks for its new rows only. ``cumulative`` (running sums of
    ``amounts`` restarting at each group) may be given by a caller holding one group's few rows,
    where pandas' grouped (compensated) sum costs far more than the arithmetic."""
    position = np.arange(len(groups)) if rows is None else rows
    starts = _group_starts(groups)[position]
    at_or_before = at_or_before or _window_bounds(groups, times)
    if cumulative is None:
        cumulative = _cumulative(groups, amounts)
    names = customer_feature_names(windows_days)
    out = {}
    for n, count_name, mean_name in zip(windows_days, names[::2], names[1::2], strict=True):
        first = at_or_before(n * NS_PER_DAY, rows)
        before_window = np.where(first > starts, cumulative[np.maximum(first - 1, 0)], 0.0)
        count = position - first + 1
        out[count_name] = count
        out[mean_name] = (cumulative[position] - before_window) / count
    return out


def _cumulative(groups: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    # Restarting at each group makes a group's result depend on its rows alone.
    return pd.Series(amounts).groupby(groups, sort=False).cumsum().to_numpy()


def _ratio(amounts: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """amount / baseline; 1 (nothing unusual) where there is no baseline (NaN) or it is 0."""
    return np.divide(
        amounts, baselines, out=np.ones(len(amounts), dtype=np.float64), where=baselines > 0
    )


def _range_max(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """max(values[start:end]) for each range; NaN for an empty one. A sparse table built one
    level at a time: a range of length L reads level floor(log2 L) twice, and only the current
    level is held, so memory stays two arrays however long the ranges."""
    lengths = ends - starts
    out = np.full(len(starts), np.nan)
    if not len(starts) or lengths.max() <= 0:
        return out
    if len(starts) <= _FEW_RANGES:
        # an online round's few rows: a slice each costs less than building the table
        for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if end > start:
                out[i] = values[start:end].max()
        return out
    level_of = np.where(lengths > 0, np.frexp(np.maximum(lengths, 1))[1] - 1, -1)
    table, width, level = np.asarray(values, dtype=np.float64), 1, 0
    while True:
        asked = level_of == level
        out[asked] = np.maximum(table[starts[asked]], table[ends[asked] - width])
        if 2 * width > lengths.max():
            return out
        table = np.maximum(table[:-width], table[width:])  # table[i]: max of values[i:i+2w]
        width, level = 2 * width, level + 1


def _last_payments(amounts: np.ndarray, *, position: np.ndarray, first: np.ndarray, k: int):
    """(rows, k) matrix of each row's k latest earlier amounts, latest first, among positions
    >= first; NaN where there are fewer."""
    out = np.full((len(position), k), np.nan)
    for back in range(1, k + 1):
        earlier = position - back
        present = earlier >= first
        out[present, back - 1] = amounts[earlier[present]]
    return out


def _row_median(matrix: np.ndarray) -> np.ndarray:
    """Median of each row's non-NaN values (NaN for none): sorting puts NaN last."""
    ordered = np.sort(matrix, axis=1)
    count = matrix.shape[1] - np.isnan(matrix).sum(axis=1)
    rows = np.arange(len(matrix))
    low = ordered[rows, np.maximum(count - 1, 0) // 2]
    high = ordered[rows, count // 2]
    return np.where(count > 0, (low + high) / 2, np.nan)


def _row_zscore(amounts: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(amount - mean) / sample std of each row's non-NaN values; 0 with fewer than two or no
    spread. Sums run column by column, so a row's result depends on its own values alone, the
    same for one row online as for millions in the batch."""
    present = ~np.isnan(matrix)
    values = np.where(present, matrix, 0.0)
    count = present.sum(axis=1)
    total = np.zeros(len(matrix))
    for column in values.T:
        total = total + column
    mean = total / np.maximum(count, 1)
    squares = np.zeros(len(matrix))
    for column, here in zip(values.T, present.T, strict=True):
        squares = squares + np.where(here, (column - mean) ** 2, 0.0)
    std = np.sqrt(squares / np.maximum(count - 1, 1))
    return np.divide(amounts - mean, std, out=np.zeros(len(matrix)), where=(count >= 2) & (std > 0))


def _amount_ratios(
    amounts: np.ndarray,
    *,
    position: np.ndarray,
    firsts: list[np.ndarray],
    starts: np.ndarray,
    cumulative: np.ndarray,
) -> list[np.ndarray]:
    """Amount over the mean and over the max of the earlier rows [first, position), per
    window."""
    current = amounts[position]
    # one sparse table serves every window's max
    maxes = np.split(
        _range_max(amounts, np.concatenate(firsts), np.tile(position, len(firsts))), len(firsts)
    )
    through_previous = cumulative[np.maximum(position - 1, 0)]
    ratios = []
    for first, window_max in zip(firsts, maxes, strict=True):
        earlier = position - first
        before_window = np.where(first > starts, cumulative[np.maximum(first - 1, 0)], 0)
        mean = np.divide(
            through_previous - before_window,
            earlier,
            out=np.full(len(position), np.nan),
            where=earlier > 0,
        )
        ratios += [_ratio(current, mean), _ratio(current, window_max)]
    return ratios


def amount_history(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    amounts: np.ndarray,
    params: FeaturesParams,
    cumulative: np.ndarray,
    rows: np.ndarray | None,
    at_or_before: Callable[..., np.ndarray],
) -> dict[str, np.ndarray]:
    """The selected groups of the amount against the card's own earlier payments (the current
    one never enters its baseline): ``amount_ratios``, over its mean and its max over (t - n, t)
    for each amount window; ``last_payments``, over the median and as a z-score of its last
    ``last_payments`` payments within the longest amount window; ``anomaly_counts``, the number
    of the card's payments above ``anomaly_factor`` x that median over (t - n, t], current row
    included, for each anomaly window. No baseline gives a ratio of 1 and a z-score of 0. Inputs
    and ``rows`` as for ``customer_windows``; ``customer_values`` shares ``cumulative`` and
    ``at_or_before`` with the windows."""
    position = np.arange(len(groups)) if rows is None else rows
    names = group_feature_names(params)
    current = amounts[position]
    out = {}
    if "amount_ratios" in params.groups:
        firsts = [at_or_before(n * NS_PER_DAY, rows) for n in params.amount_windows_days]
        ratios = _amount_ratios(
            amounts,
            position=position,
            firsts=firsts,
            starts=_group_starts(groups)[position],
            cumulative=cumulative,
        )
        out |= dict(zip(names["amount_ratios"], ratios, strict=True))
    if not {"last_payments", "anomaly_counts"} & set(params.groups):
        return out
    look_back = max(params.amount_windows_days) * NS_PER_DAY
    k = params.last_payments
    if "anomaly_counts" in params.groups:
        # the counts read earlier rows' medians: every row's is needed
        last = _last_payments(
            amounts, position=np.arange(len(groups)), first=at_or_before(look_back), k=k
        )
        median = _row_median(last)
        anomalous = np.concatenate([[0], np.cumsum(amounts > params.anomaly_factor * median)])
        counts = [
            anomalous[position + 1] - anomalous[at_or_before(n * NS_PER_DAY, rows)]
            for n in params.anomaly_windows_days
        ]
        out |= dict(zip(names["anomaly_counts"], counts, strict=True))
        last, median = last[position], median[position]
    else:
        last = _last_payments(amounts, position=position, first=at_or_before(look_back, rows), k=k)
        median = _row_median(last)
    if "last_payments" in params.groups:
        stats = [_ratio(current, median), _row_zscore(current, last)]
        out |= dict(zip(names["last_payments"], stats, strict=True))
    return out


def known_labels(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    labels: np.ndarray,
    params: FeaturesParams,
    rows: np.ndarray | None,
    at_or_before: Callable[..., np.ndarray],
) -> dict[str, np.ndarray]:
    """What the terminal's known labels (rows up to t - d, within the longest terminal window
    before that) say about it now: whether its last known payment was a fraud; the length of
    the run of known frauds ending there and its age in days (0 without a run); the days since
    its last known fraud (d + the longest window when none). A compromise has a lifetime, which
    the rates of fixed windows blur. Inputs and ``rows`` as for ``terminal_windows``;
    ``terminal_values`` shares ``at_or_before`` with the windows."""
    position = np.arange(len(groups)) if rows is None else rows
    delay = params.label_delay_days * NS_PER_DAY
    look_back = delay + max(params.terminal_windows_days) * NS_PER_DAY
    end = at_or_before(delay, rows)
    begin = at_or_before(look_back, rows)
    known = end > begin
    last = np.maximum(end - 1, 0)
    index = np.arange(len(groups))
    # latest legitimate and latest fraud at or before each row (any group: ``begin`` clamps)
    last_legit = np.maximum.accumulate(np.where(labels == 0, index, -1))[last]
    last_fraud = np.maximum.accumulate(np.where(labels == 1, index, -1))[last]
    now = times[position]
    run_start = np.maximum(last_legit + 1, begin)
    run_length = np.where(known, end - run_start, 0)
    in_run = run_length > 0
    seen_fraud = known & (last_fraud >= begin)
    return dict(
        zip(
            KNOWN_LABEL_FEATURES,
            (
                (known & (labels[last] == 1)).astype(np.int64),
                run_length,
                np.where(in_run, (now - times[np.where(in_run, run_start, 0)]) / NS_PER_DAY, 0),
                np.where(
                    seen_fraud,
                    (now - times[np.maximum(last_fraud, 0)]) / NS_PER_DAY,
                    look_back / NS_PER_DAY,
                ),
            ),
            strict=True,
        )
    )


def terminal_windows(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    labels: np.ndarray,
    windows_days: list[int],
    delay_days: int,
    rows: np.ndarray | None = None,
    at_or_before: Callable[..., np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Count and fraud rate over (t - d - n, t - d]; rate 0 for an empty window. Inputs sorted by
    (group, time, transaction_id); outputs aligned with the inputs, or with ``rows`` when
    given."""
    at_or_before = at_or_before or _window_bounds(groups, times)
    delay = delay_days * NS_PER_DAY
    end = at_or_before(delay, rows)
    frauds_before = np.concatenate([[0], np.cumsum(labels, dtype=np.int64)])
    names = terminal_feature_names(windows_days)
    out = {}
    for n, count_name, risk_name in zip(windows_days, names[::2], names[1::2], strict=True):
        begin = at_or_before(delay + n * NS_PER_DAY, rows)
        count = end - begin
        frauds = frauds_before[end] - frauds_before[begin]
        out[count_name] = count
        out[risk_name] = np.divide(
            frauds, count, out=np.zeros(len(count), dtype=np.float64), where=count > 0
        )
    return out


def _by_group(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group codes, times (int64 ns) and the permutation sorting by (group, time, id).

    ``frame`` is already sorted by (time, id), so a stable sort by group finishes the job.
    """
    codes, _ = pd.factorize(frame[column], sort=True)
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.argsort(codes, kind="stable")
    return codes[order], times[order], order


def _scatter(values: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Put arrays computed in ``order`` back in frame order."""
    out = {}
    for name, sorted_values in values.items():
        restored = np.empty_like(sorted_values)
        restored[order] = sorted_values
        out[name] = restored
    return out


def calendar_features(frame: pd.DataFrame, params: FeaturesParams) -> dict[str, np.ndarray]:
    """Weekend and night flags of each row."""
    when = frame[schema.TX_DATETIME]
    return {
        "tx_during_weekend": (when.dt.day_of_week >= SATURDAY).astype(np.int8).to_numpy(),
        "tx_during_night": (when.dt.hour <= params.night_end_hour).astype(np.int8).to_numpy(),
    }


def customer_features(frame: pd.DataFrame, params: FeaturesParams) -> dict[str, np.ndarray]:
    """Customer windows of each row of ``frame`` (sorted by (time, id)); a customer's values
    depend on its own rows alone, so any frame holding all its rows gives the same."""
    groups, times, order = _by_group(frame, schema.CUSTOMER_ID)
    amounts = frame[schema.TX_AMOUNT].to_numpy(dtype=np.float64)[order]
    return _scatter(customer_values(groups, times, amounts=amounts, params=params), order)


def customer_values(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    amounts: np.ndarray,
    params: FeaturesParams,
    cumulative: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every customer feature: the windows and the selected groups of the amount history.
    Inputs and ``rows`` as for ``customer_windows``."""
    at_or_before = _window_bounds(groups, times)
    if cumulative is None:
        cumulative = _cumulative(groups, amounts)
    shared = {"cumulative": cumulative, "rows": rows, "at_or_before": at_or_before}
    out = customer_windows(
        groups, times, amounts=amounts, windows_days=params.customer_windows_days, **shared
    )
    if {"amount_ratios", "last_payments", "anomaly_counts"} & set(params.groups):
        out |= amount_history(groups, times, amounts=amounts, params=params, **shared)
    return out


def terminal_values(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    labels: np.ndarray,
    params: FeaturesParams,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every terminal feature: the windows and, when selected, the known labels. Inputs and
    ``rows`` as for ``terminal_windows``."""
    shared = {"rows": rows, "at_or_before": _window_bounds(groups, times)}
    out = terminal_windows(
        groups,
        times,
        labels=labels,
        windows_days=params.terminal_windows_days,
        delay_days=params.label_delay_days,
        **shared,
    )
    if "known_labels" in params.groups:
        out |= known_labels(groups, times, labels=labels, params=params, **shared)
    return out


def terminal_features(frame: pd.DataFrame, params: FeaturesParams) -> dict[str, np.ndarray]:
    """Terminal windows of each row of ``frame`` (sorted by (time, id)); like the customer
    windows, a terminal's values depend on its own rows alone."""
    groups, times, order = _by_group(frame, schema.TERMINAL_ID)
    if schema.TX_FRAUD in frame:
        labels = frame[schema.TX_FRAUD].fillna(0).to_numpy(dtype=np.int64)
    else:
        labels = np.zeros(len(frame), dtype=np.int64)
    return _scatter(terminal_values(groups, times, labels=labels[order], params=params), order)
