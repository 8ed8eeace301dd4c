"""Features of transactions not yet stored, from their cards' and terminals' stored rows, with
the batch kernels (``fraudlab.features.kernels``) run on just the groups a transaction touches:
the second online path, kept beside the scoring service's running state
(``fraudlab.features.state``) for the point-in-time tests and ``bench/online_features.py``. The
same-timestamp rule is the batch's: rows are ordered by (tx_datetime, transaction_id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams
from fraudlab.features.kernels import NS_PER_DAY, SATURDAY, customer_values, terminal_values
from fraudlab.features.names import feature_names


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
    days, rest = np.divmod(times, NS_PER_DAY)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return weekday >= SATURDAY, rest // (3600 * 10**9) <= night_end_hour


class Merged(NamedTuple):
    """Stored rows of some groups merged with new rows, as the kernels take them: sorted by
    (group, time, id); ``rows`` are the new rows' positions, in the order they were given."""

    keys: list  # the group ids, by group code
    groups: np.ndarray
    times: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    rows: np.ndarray


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
