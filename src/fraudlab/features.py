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

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.params import FeaturesParams

_NS_PER_DAY = 86_400 * 10**9
_FEW_RANGES = 64  # below this many, _range_max slices instead of building a sparse table
_SATURDAY = 5


def customer_feature_names(windows_days: list[int]) -> list[str]:
    return [
        name
        for n in windows_days
        for name in (f"customer_id_nb_tx_{n}day_window", f"customer_id_avg_amount_{n}day_window")
    ]


def terminal_feature_names(windows_days: list[int]) -> list[str]:
    return [
        name
        for n in windows_days
        for name in (f"terminal_id_nb_tx_{n}day_window", f"terminal_id_risk_{n}day_window")
    ]


# The groups beyond the handbook's 15 features, in the order their columns come
GROUPS = ("amount_ratios", "last_payments", "anomaly_counts", "known_labels")
KNOWN_LABEL_FEATURES = [
    "terminal_id_last_known_fraud",
    "terminal_id_known_fraud_run_length",
    "terminal_id_known_fraud_run_age_days",
    "terminal_id_days_since_known_fraud",
]


def group_feature_names(params: FeaturesParams) -> dict[str, list[str]]:
    """Every group's feature columns (whether ``params.groups`` selects it or not)."""
    last = params.last_payments
    return {
        "amount_ratios": [
            name
            for n in params.amount_windows_days
            for name in (
                f"customer_id_amount_over_mean_{n}day_window",
                f"customer_id_amount_over_max_{n}day_window",
            )
        ],
        "last_payments": [
            f"customer_id_amount_over_median_last_{last}",
            f"customer_id_amount_zscore_last_{last}",
        ],
        "anomaly_counts": [
            f"customer_id_nb_anomalies_{n}day_window" for n in params.anomaly_windows_days
        ],
        "known_labels": list(KNOWN_LABEL_FEATURES),
    }


def feature_names(params: FeaturesParams) -> list[str]:
    """Model input columns, in a fixed order: the handbook's 15, then the selected groups."""
    by_group = group_feature_names(params)
    return [
        schema.TX_AMOUNT,
        "tx_during_weekend",
        "tx_during_night",
        *customer_feature_names(params.customer_windows_days),
        *terminal_feature_names(params.terminal_windows_days),
        *(name for group in GROUPS if group in params.groups for name in by_group[group]),
    ]


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
        first = at_or_before(n * _NS_PER_DAY, rows)
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
        firsts = [at_or_before(n * _NS_PER_DAY, rows) for n in params.amount_windows_days]
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
    look_back = max(params.amount_windows_days) * _NS_PER_DAY
    k = params.last_payments
    if "anomaly_counts" in params.groups:
        # the counts read earlier rows' medians: every row's is needed
        last = _last_payments(
            amounts, position=np.arange(len(groups)), first=at_or_before(look_back), k=k
        )
        median = _row_median(last)
        anomalous = np.concatenate([[0], np.cumsum(amounts > params.anomaly_factor * median)])
        counts = [
            anomalous[position + 1] - anomalous[at_or_before(n * _NS_PER_DAY, rows)]
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
    delay = params.label_delay_days * _NS_PER_DAY
    look_back = delay + max(params.terminal_windows_days) * _NS_PER_DAY
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
                np.where(in_run, (now - times[np.where(in_run, run_start, 0)]) / _NS_PER_DAY, 0),
                np.where(
                    seen_fraud,
                    (now - times[np.maximum(last_fraud, 0)]) / _NS_PER_DAY,
                    look_back / _NS_PER_DAY,
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
    delay = delay_days * _NS_PER_DAY
    end = at_or_before(delay, rows)
    frauds_before = np.concatenate([[0], np.cumsum(labels, dtype=np.int64)])
    names = terminal_feature_names(windows_days)
    out = {}
    for n, count_name, risk_name in zip(windows_days, names[::2], names[1::2], strict=True):
        begin = at_or_before(delay + n * _NS_PER_DAY, rows)
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
        "tx_during_weekend": (when.dt.day_of_week >= _SATURDAY).astype(np.int8).to_numpy(),
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


def build_features(frame: pd.DataFrame, params: FeaturesParams) -> pd.DataFrame:
    """Return ``frame`` sorted by (tx_datetime, transaction_id) with the feature columns added.

    ``tx_fraud`` may be absent or missing for some rows (labels not yet known): those count as
    legitimate in terminal windows.
    """
    frame = frame.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)
    return frame.assign(
        **calendar_features(frame, params),
        **customer_features(frame, params),
        **terminal_features(frame, params),
    )


def history_needed(params: FeaturesParams) -> tuple[pd.Timedelta, pd.Timedelta]:
    """How far back the online scorer must look: (customer history, terminal history). The
    anomaly counts read earlier rows' medians, each looking back the longest amount window;
    the known labels look back no further than the terminal windows."""
    day = pd.Timedelta(days=1)
    customer = max(params.customer_windows_days)
    if {"amount_ratios", "last_payments"} & set(params.groups):
        customer = max(customer, max(params.amount_windows_days))
    if "anomaly_counts" in params.groups:
        customer = max(customer, max(params.amount_windows_days) + max(params.anomaly_windows_days))
    return (
        customer * day,
        (params.label_delay_days + max(params.terminal_windows_days)) * day,
    )


class History(NamedTuple):
    """One customer's or terminal's stored transactions, sorted by (time, id): what the online
    scorer reads from its store. ``values`` are amounts for a customer, labels known so far
    (0 when not yet known) for a terminal."""

    times: np.ndarray  # int64 nanoseconds, naive UTC
    ids: np.ndarray  # int64 transaction ids
    values: np.ndarray


def _before(rows: History, time: int, transaction_id: int) -> History:
    """The rows ordered before (time, transaction_id): the same-timestamp rule of the batch."""
    first_same = int(np.searchsorted(rows.times, time, side="left"))
    after_same = int(np.searchsorted(rows.times, time, side="right"))
    end = first_same + int(
        np.searchsorted(rows.ids[first_same:after_same], transaction_id, side="left")
    )
    return History(rows.times[:end], rows.ids[:end], rows.values[:end])


class NewRows(NamedTuple):
    """Transactions to score online, not yet in the stored histories."""

    times: np.ndarray  # int64 nanoseconds, naive UTC
    ids: np.ndarray  # int64 transaction ids
    amounts: np.ndarray  # float64
    customers: list  # customer id per row
    terminals: list  # terminal id per row


def _calendar(times: np.ndarray, night_end_hour: int) -> tuple[np.ndarray, np.ndarray]:
    days, rest = np.divmod(times, _NS_PER_DAY)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return weekday >= _SATURDAY, rest // (3600 * 10**9) <= night_end_hour


class Merged(NamedTuple):
    """Stored rows of some groups merged with new rows, as the kernels take them: sorted by
    (group, time, id); ``rows`` are the new rows' positions, in the order they were given."""

    keys: list  # the group ids, by group code
    groups: np.ndarray
    times: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    rows: np.ndarray

    def histories(self, *, after: int | None = None) -> dict:
        """Each group's rows after the merge, only those later than ``after`` when given (a
        group may be left empty)."""
        groups, times, ids, values = self.groups, self.times, self.ids, self.values
        if after is not None:
            later = times > after
            groups, times, ids, values = groups[later], times[later], ids[later], values[later]
        bounds = np.searchsorted(groups, np.arange(len(self.keys) + 1)).tolist()
        return {
            key: History(times[start:end], ids[start:end], values[start:end])
            for key, start, end in zip(self.keys, bounds[:-1], bounds[1:], strict=True)
        }


def _is_sorted(groups: np.ndarray, *, times: np.ndarray, ids: np.ndarray) -> bool:
    """Whether rows are in (group, time, id) order."""
    g, t, i = np.diff(groups), np.diff(times), np.diff(ids)
    return bool(np.all((g > 0) | ((g == 0) & ((t > 0) | ((t == 0) & (i > 0))))))


def _merged(keys: list, *, new: History, stored: Mapping) -> Merged:
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        return _merged_one(distinct, new=new, stored=stored.get(distinct[0]))
    code = {key: i for i, key in enumerate(distinct)}
    new_groups = np.fromiter((code[key] for key in keys), dtype=np.int64, count=len(keys))
    by_group = np.lexsort((new.ids, new.times, new_groups))
    new_counts = np.bincount(new_groups, minlength=len(distinct))
    parts = [stored.get(key) for key in distinct]
    parts = [(i, part) for i, part in enumerate(parts) if part is not None and len(part.times)]
    stored_counts = np.zeros(len(distinct), dtype=np.int64)
    stored_counts[[i for i, _ in parts]] = [len(part.times) for _, part in parts]
    # each group's block: its stored rows, then its new rows (in order unless a new row
    # arrived late, before a stored one, which the sort below fixes)
    block_start = np.concatenate([[0], np.cumsum(stored_counts + new_counts)[:-1]])
    total = int(stored_counts.sum() + new_counts.sum())
    into_stored = np.repeat(block_start - np.concatenate([[0], np.cumsum(stored_counts)[:-1]]),
                            stored_counts) + np.arange(int(stored_counts.sum()))  # fmt: skip
    into_new = np.repeat(
        block_start + stored_counts - np.concatenate([[0], np.cumsum(new_counts)[:-1]]),
        new_counts,
    ) + np.arange(len(keys))
    fields = []
    for f in range(3):
        merged = np.empty(total, dtype=np.result_type(new[f], *(part[f] for _, part in parts[:1])))
        if parts:
            merged[into_stored] = np.concatenate([part[f] for _, part in parts])
        merged[into_new] = new[f][by_group]
        fields.append(merged)
    times, ids, values = fields
    groups = np.repeat(np.arange(len(distinct), dtype=np.int64), stored_counts + new_counts)
    is_new = np.zeros(total, dtype=bool)
    is_new[into_new] = True
    if not _is_sorted(groups, times=times, ids=ids):
        order = np.lexsort((ids, times, groups))
        times, ids, values, is_new = times[order], ids[order], values[order], is_new[order]
    # the new rows appear in merged order as ``by_group`` lists them (their ids are distinct)
    rows = np.empty(len(keys), dtype=np.int64)
    rows[by_group] = np.flatnonzero(is_new)
    return Merged(distinct, groups, times, ids, values, rows)


def _running_sums(groups: np.ndarray, values: np.ndarray, *, n_groups: int) -> np.ndarray | None:
    """Running sums restarting at each group, for the few groups of a scoring round: a plain
    sum per group (it differs from the batch's compensated sum by far less than 1e-9, which the
    parity tests bound). None (pandas' grouped sum) for many groups, where one call is cheaper
    than a call per group."""
    if n_groups == 1:
        return np.cumsum(values)
    if n_groups > 256:
        return None
    starts = np.flatnonzero(np.diff(groups)) + 1
    return np.concatenate([np.cumsum(part) for part in np.split(values, starts)])


def _merged_one(keys: list, *, new: History, stored: History | None) -> Merged:
    """``_merged`` for one group (a round of one transaction): the same result, with a few
    array operations instead of the general bookkeeping."""
    by_time = np.lexsort((new.ids, new.times)) if len(new.ids) > 1 else np.zeros(1, np.int64)
    n_stored = 0 if stored is None else len(stored.times)
    times, ids, values = (
        np.concatenate([stored[f], new[f][by_time]]) if n_stored else new[f][by_time]
        for f in range(3)
    )
    is_new = np.zeros(len(times), dtype=bool)
    is_new[n_stored:] = True
    # stored rows and new rows are each in order: only a late new row needs a sort
    if n_stored and (times[n_stored - 1], ids[n_stored - 1]) > (times[n_stored], ids[n_stored]):
        order = np.lexsort((ids, times))
        times, ids, values, is_new = times[order], ids[order], values[order], is_new[order]
    rows = np.empty(len(new.ids), dtype=np.int64)
    rows[by_time] = np.flatnonzero(is_new)
    groups = np.zeros(len(times), dtype=np.int64)
    return Merged(keys, groups, times, ids, values, rows)


class OnlineFeatures(NamedTuple):
    matrix: np.ndarray  # one row per new transaction, columns in ``feature_names`` order
    customers: Merged  # the customers' stored rows with the new ones (amounts)
    terminals: Merged  # the terminals' stored rows with the new ones (labels; 0 for new)


def online_feature_matrix(
    new: NewRows, *, customers: Mapping, terminals: Mapping, params: FeaturesParams
) -> OnlineFeatures:
    """Features of transactions not yet stored (rows in ``new``'s order), from their customers'
    and terminals' stored rows (``History`` by id; rows after a new one in (time, id) order are
    ignored, as the batch ignores the future). The new rows see each other in (time, id) order,
    as if scored one by one. The batch kernels run on just these groups' rows and report only
    the new rows."""
    weekend, night = _calendar(new.times, params.night_end_hour)
    by_customer = _merged(
        new.customers, new=History(new.times, new.ids, new.amounts), stored=customers
    )
    customer = customer_values(
        by_customer.groups,
        by_customer.times,
        amounts=by_customer.values,
        params=params,
        cumulative=_running_sums(
            by_customer.groups, by_customer.values, n_groups=len(by_customer.keys)
        ),
        rows=by_customer.rows,
    )
    # a new transaction's own label never enters its windows: 0 is a placeholder
    unlabelled = np.zeros(len(new.ids), dtype=np.int64)
    by_terminal = _merged(
        new.terminals, new=History(new.times, new.ids, unlabelled), stored=terminals
    )
    terminal = terminal_values(
        by_terminal.groups,
        by_terminal.times,
        labels=by_terminal.values.astype(np.int64, copy=False),
        params=params,
        rows=by_terminal.rows,
    )
    columns = (
        customer
        | terminal
        | {
            schema.TX_AMOUNT: new.amounts,
            "tx_during_weekend": weekend,
            "tx_during_night": night,
        }
    )
    matrix = np.column_stack([columns[name] for name in feature_names(params)]).astype(np.float64)
    return OnlineFeatures(matrix, by_customer, by_terminal)


def transaction_features(
    *,
    time: int,
    transaction_id: int,
    amount: float,
    customer: History,
    terminal: History,
    params: FeaturesParams,
) -> np.ndarray:
    """One transaction's features, in ``feature_names`` order, from its customer's and its
    terminal's stored rows (the transaction itself and any rows after it are ignored):
    what `build_features` gives the same row, without a frame in sight."""
    new = NewRows(
        np.array([time], dtype=np.int64),
        np.array([transaction_id], dtype=np.int64),
        np.array([amount], dtype=np.float64),
        [0],
        [0],
    )
    return online_feature_matrix(
        new,
        customers={0: _before(customer, time, transaction_id)},
        terminals={0: _before(terminal, time, transaction_id)},
        params=params,
    ).matrix[0]


def histories(frame: pd.DataFrame, column: str, values: np.ndarray) -> dict:
    """Each group's History (``values`` aligned with the rows) from a frame sorted by
    (time, id)."""
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ids = frame[schema.TRANSACTION_ID].to_numpy(dtype=np.int64)
    return {
        group: History(times[rows], ids[rows], values[rows])
        for group, rows in frame.groupby(column, sort=False).indices.items()
    }


def online_features(
    history: pd.DataFrame, transaction: pd.DataFrame, *, params: FeaturesParams
) -> pd.DataFrame:
    """Features of new transaction(s) from stored history, one transaction at a time, with the
    batch kernels (``transaction_features``). New transactions see each other as an online
    scorer would: in (time, id) order. ``history`` holds labels where known."""
    combined = pd.concat([history, transaction], ignore_index=True).sort_values(
        schema.SORT_KEYS, kind="stable", ignore_index=True
    )
    labels = (
        combined[schema.TX_FRAUD].fillna(0).to_numpy(dtype=np.int64)
        if schema.TX_FRAUD in combined
        else np.zeros(len(combined), dtype=np.int64)
    )
    amounts = combined[schema.TX_AMOUNT].to_numpy(dtype=np.float64)
    customers = histories(combined, schema.CUSTOMER_ID, amounts)
    terminals = histories(combined, schema.TERMINAL_ID, labels)
    new = transaction.sort_values(schema.SORT_KEYS, kind="stable", ignore_index=True)
    columns = zip(
        new[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64),
        new[schema.TRANSACTION_ID].to_numpy(dtype=np.int64),
        new[schema.TX_AMOUNT].to_numpy(dtype=np.float64),
        new[schema.CUSTOMER_ID].to_numpy(),
        new[schema.TERMINAL_ID].to_numpy(),
        strict=True,
    )
    rows = [
        transaction_features(
            time=int(time),
            transaction_id=int(tx_id),
            amount=float(amount),
            customer=customers[customer],
            terminal=terminals[terminal],
            params=params,
        )
        for time, tx_id, amount, customer, terminal in columns
    ]
    return new.assign(**dict(zip(feature_names(params), np.array(rows).T, strict=True)))
