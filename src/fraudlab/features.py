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

The kernels work on plain arrays sorted by (group, time, id) and never look at another group's
rows, so they run unchanged per partition of a frame split by customer or by terminal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.params import FeaturesParams

_NS_PER_DAY = 86_400 * 10**9
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


def feature_names(params: FeaturesParams) -> list[str]:
    """Model input columns, in a fixed order."""
    return [
        schema.TX_AMOUNT,
        "tx_during_weekend",
        "tx_during_night",
        *customer_feature_names(params.customer_windows_days),
        *terminal_feature_names(params.terminal_windows_days),
    ]


def _window_bounds(groups: np.ndarray, times: np.ndarray) -> Callable[[int], np.ndarray]:
    """Rows are sorted by (group, time). Return ``at_or_before(offset)`` giving, for each row i,
    the number of rows with (group, time) <= (groups[i], times[i] - offset): the index of the
    first row after that point.

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

    def at_or_before(offset: int) -> np.ndarray:
        return np.searchsorted(row_keys, keys(offset), side="right")

    return at_or_before


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """For sorted ``groups``, the index of the first row of each row's group."""
    index = np.arange(len(groups))
    is_start = np.ones(len(groups), dtype=bool)
    is_start[1:] = groups[1:] != groups[:-1]
    return np.maximum.accumulate(np.where(is_start, index, 0))


def customer_windows(
    groups: np.ndarray, times: np.ndarray, *, amounts: np.ndarray, windows_days: list[int]
) -> dict[str, np.ndarray]:
    """Count and mean amount over (t - n, t], current row included. Inputs sorted by
    (group, time, transaction_id); outputs aligned with the inputs."""
    position = np.arange(len(groups))
    starts = _group_starts(groups)
    at_or_before = _window_bounds(groups, times)
    # Cumulative sums restart at each group, so a group's result depends on its rows alone.
    cumulative = pd.Series(amounts).groupby(groups, sort=False).cumsum().to_numpy()
    names = customer_feature_names(windows_days)
    out = {}
    for n, count_name, mean_name in zip(windows_days, names[::2], names[1::2], strict=True):
        first = at_or_before(n * _NS_PER_DAY)
        before_window = np.where(first > starts, cumulative[np.maximum(first - 1, 0)], 0.0)
        count = position - first + 1
        out[count_name] = count
        out[mean_name] = (cumulative - before_window) / count
    return out


def terminal_windows(
    groups: np.ndarray,
    times: np.ndarray,
    *,
    labels: np.ndarray,
    windows_days: list[int],
    delay_days: int,
) -> dict[str, np.ndarray]:
    """Count and fraud rate over (t - d - n, t - d]; rate 0 for an empty window. Inputs sorted by
    (group, time, transaction_id); outputs aligned with the inputs."""
    at_or_before = _window_bounds(groups, times)
    delay = delay_days * _NS_PER_DAY
    end = at_or_before(delay)
    frauds_before = np.concatenate([[0], np.cumsum(labels, dtype=np.int64)])
    names = terminal_feature_names(windows_days)
    out = {}
    for n, count_name, risk_name in zip(windows_days, names[::2], names[1::2], strict=True):
        begin = at_or_before(delay + n * _NS_PER_DAY)
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


def build_features(frame: pd.DataFrame, params: FeaturesParams) -> pd.DataFrame:
    """Return ``frame`` sorted by (tx_datetime, transaction_id) with the feature columns added.

    ``tx_fraud`` may be absent or missing for some rows (labels not yet known): those count as
    legitimate in terminal windows.
    """
    frame = frame.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)
    when = frame[schema.TX_DATETIME]
    calendar = {
        "tx_during_weekend": (when.dt.day_of_week >= _SATURDAY).astype(np.int8).to_numpy(),
        "tx_during_night": (when.dt.hour <= params.night_end_hour).astype(np.int8).to_numpy(),
    }

    groups, times, order = _by_group(frame, schema.CUSTOMER_ID)
    amounts = frame[schema.TX_AMOUNT].to_numpy(dtype=np.float64)[order]
    customer = _scatter(
        customer_windows(groups, times, amounts=amounts, windows_days=params.customer_windows_days),
        order,
    )

    groups, times, order = _by_group(frame, schema.TERMINAL_ID)
    if schema.TX_FRAUD in frame:
        labels = frame[schema.TX_FRAUD].fillna(0).to_numpy(dtype=np.int64)
    else:
        labels = np.zeros(len(frame), dtype=np.int64)
    terminal = _scatter(
        terminal_windows(
            groups,
            times,
            labels=labels[order],
            windows_days=params.terminal_windows_days,
            delay_days=params.label_delay_days,
        ),
        order,
    )
    return frame.assign(**calendar, **customer, **terminal)


def history_needed(params: FeaturesParams) -> tuple[pd.Timedelta, pd.Timedelta]:
    """How far back the online scorer must look: (customer history, terminal history)."""
    day = pd.Timedelta(days=1)
    return (
        max(params.customer_windows_days) * day,
        (params.label_delay_days + max(params.terminal_windows_days)) * day,
    )


def online_features(
    history: pd.DataFrame, transaction: pd.DataFrame, *, params: FeaturesParams
) -> pd.DataFrame:
    """Features of new transaction(s) from stored history, with the batch code.

    ``history`` holds earlier transactions (labels where known); only the rows of the
    transaction's customer and terminal inside the windows are used, as a store would serve them.
    """
    customer_span, terminal_span = history_needed(params)
    earliest = transaction[schema.TX_DATETIME].min()
    relevant = (
        history[schema.CUSTOMER_ID].isin(transaction[schema.CUSTOMER_ID])
        & (history[schema.TX_DATETIME] > earliest - customer_span)
    ) | (
        history[schema.TERMINAL_ID].isin(transaction[schema.TERMINAL_ID])
        & (history[schema.TX_DATETIME] > earliest - terminal_span)
    )
    combined = pd.concat([history.loc[relevant], transaction], ignore_index=True)
    features = build_features(combined, params)
    is_new = features[schema.TRANSACTION_ID].isin(transaction[schema.TRANSACTION_ID])
    return features.loc[is_new].reset_index(drop=True)
