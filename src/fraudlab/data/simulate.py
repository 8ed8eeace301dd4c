"""Vectorized transaction simulator (the handbook's generator, re-derived from its description).

Customers and terminals sit on a 100 x 100 square; a customer pays at terminals within
``radius``. Every random draw comes from one ``numpy.random.Generator`` seeded from params, in a
fixed order, so the output is a pure function of the params. A drift scenario (``params.drift``)
draws from a generator of its own, after all the others: the world before its start day, and
with ``none`` the whole output, is the same as without it.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.spatial import cKDTree

from fraudlab.core import schema
from fraudlab.core.io import part_days, part_starts, read_days, write_days, write_part
from fraudlab.core.params import DriftParams, SimulateParams

log = logging.getLogger(__name__)

_SECONDS_PER_DAY = 86_400
_TIME_OF_DAY_MEAN = 43_200.0
_TIME_OF_DAY_STD = 20_000.0
_AREA_SIZE = 100.0

SCENARIO_HIGH_AMOUNT = 1
SCENARIO_COMPROMISED_TERMINAL = 2
SCENARIO_COMPROMISED_CUSTOMER = 3
_DRIFT_STREAM = 1  # the drift scenarios' generator: seeded with (seed, _DRIFT_STREAM)


@dataclass(frozen=True)
class _Customers:
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_tx_per_day: np.ndarray
    terminal_offsets: np.ndarray  # CSR offsets into terminal_lists, length n_customers + 1
    terminal_lists: np.ndarray


@dataclass(frozen=True)
class _Transactions:
    seconds: np.ndarray  # seconds since start_date
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray

    @property
    def day(self) -> np.ndarray:
        return self.seconds // _SECONDS_PER_DAY


def _customers(rng: np.random.Generator, params: SimulateParams) -> _Customers:
    n = params.n_customers
    location = rng.uniform(0, _AREA_SIZE, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    mean_tx_per_day = rng.uniform(0, 4, size=n)
    terminal_location = rng.uniform(0, _AREA_SIZE, size=(params.n_terminals, 2))
    offsets, lists = _reach(location, cKDTree(terminal_location), radius=params.radius)
    return _Customers(mean_amount, mean_amount / 2, mean_tx_per_day, offsets, lists)


def _reach(
    location: np.ndarray, terminals: cKDTree, *, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's terminals within ``radius``, as CSR offsets and lists."""
    in_range = terminals.query_ball_point(location, r=radius, return_sorted=True)
    counts = np.fromiter((len(t) for t in in_range), dtype=np.int64, count=len(location))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lists = np.fromiter((t for ts in in_range for t in ts), dtype=np.int64, count=offsets[-1])
    return offsets, lists


def _transactions(rng: np.random.Generator, customers: _Customers, n_days: int) -> _Transactions:
    n_customers = len(customers.mean_amount)
    n_terminals = np.diff(customers.terminal_offsets)
    per_day = rng.poisson(customers.mean_tx_per_day, size=(n_days, n_customers))
    per_day[:, n_terminals == 0] = 0  # nowhere to pay: no transactions
    counts = per_day.ravel()
    day = np.repeat(np.repeat(np.arange(n_days), n_customers), counts)
    customer = np.repeat(np.tile(np.arange(n_customers), n_days), counts)

    time_of_day = rng.normal(_TIME_OF_DAY_MEAN, _TIME_OF_DAY_STD, size=len(day))
    mean, std = customers.mean_amount[customer], customers.std_amount[customer]
    amount = rng.normal(mean, std)
    replacement = rng.uniform(0, 2 * mean)
    amount = np.round(np.where(amount < 0, replacement, amount), 2)
    pick = rng.random(len(day))
    terminal = customers.terminal_lists[
        customers.terminal_offsets[customer] + (pick * n_terminals[customer]).astype(np.int64)
    ]

    keep = (time_of_day > 0) & (time_of_day < _SECONDS_PER_DAY)
    seconds = day[keep] * _SECONDS_PER_DAY + time_of_day[keep].astype(np.int64)
    order = np.argsort(seconds, kind="stable")
    return _Transactions(
        seconds=seconds[order],
        customer=customer[keep][order],
        terminal=terminal[keep][order],
        amount=amount[keep][order],
    )


def _compromised_terminal_fraud(
    rng: np.random.Generator, tx: _Transactions, params: SimulateParams
) -> np.ndarray:
    """Each day some terminals are compromised: all their transactions for a period are fraud."""
    keys = _compromise_keys(rng, days=range(params.n_days), params=params)
    return _at_compromised(tx, keys, n_days=params.n_days)


def _compromise_keys(
    rng: np.random.Generator, *, days: range, params: SimulateParams, per_day: int | None = None
) -> np.ndarray:
    """Draw, each day, ``per_day`` terminals (default: params') compromised from that day for
    ``compromised_terminal_days``; return the compromised (terminal, day) pairs as sorted keys
    ``terminal * n_days + day`` (a few per day, at any number of terminals)."""
    per_day = params.compromised_terminals_per_day if per_day is None else per_day
    keys = [np.empty(0, dtype=np.int64)]
    for day in days:
        terminals = rng.choice(params.n_terminals, size=per_day, replace=False)
        span = np.arange(day, min(day + params.compromised_terminal_days, params.n_days))
        keys.append((terminals[:, None] * params.n_days + span[None, :]).ravel())
    return np.unique(np.concatenate(keys))


def _at_compromised(tx: _Transactions, keys: np.ndarray, *, n_days: int) -> np.ndarray:
    """Mask of transactions at a terminal on a day it is compromised."""
    return np.isin(tx.terminal * n_days + tx.day, keys)


def _compromised_customer_fraud(
    rng: np.random.Generator, tx: _Transactions, params: SimulateParams
) -> tuple[np.ndarray, np.ndarray]:
    """Each day some customers are compromised: a third of their next transactions are fraud,
    at five times the amount. Returns the fraud mask and the amount multipliers."""
    by_customer = np.argsort(tx.customer, kind="stable")  # within a customer: time order
    starts = np.searchsorted(tx.customer[by_customer], np.arange(params.n_customers + 1))
    days = tx.day
    fraud = np.zeros(len(days), dtype=bool)
    multiplier = np.ones(len(days))
    for day in range(params.n_days):
        customers = rng.choice(
            params.n_customers, size=params.compromised_customers_per_day, replace=False
        )
        candidates = np.concatenate([by_customer[starts[c] : starts[c + 1]] for c in customers])
        in_period = (days[candidates] >= day) & (
            days[candidates] < day + params.compromised_customer_days
        )
        candidates = np.sort(candidates[in_period])
        chosen = rng.choice(candidates, size=len(candidates) // 3, replace=False)
        fraud[chosen] = True
        multiplier[chosen] *= 5
    return fraud, multiplier


def _surge_fraud(tx: _Transactions, params: SimulateParams) -> np.ndarray:
    """``terminal_surge``: from the start day, more terminals compromised each day."""
    return _at_compromised(tx, _surge_keys(params), n_days=params.n_days)


def _surge_keys(params: SimulateParams) -> np.ndarray:
    drift = params.drift
    extra = round(drift.strength * params.compromised_terminals_per_day)
    days = range(drift.start_day, params.n_days)
    return _compromise_keys(_drift_rng(params), days=days, params=params, per_day=extra)


def _drift_rng(params: SimulateParams) -> np.random.Generator:
    return np.random.default_rng([params.seed, _DRIFT_STREAM])


def _dark(rng: np.random.Generator, params: SimulateParams) -> np.ndarray:
    """``terminals_dark``: which terminals go out of service."""
    return rng.random(params.n_terminals) < params.drift.strength


def _dark_terminals(
    tx: _Transactions,
    customers: _Customers,
    *,
    dark: np.ndarray | None,
    rng: np.random.Generator,
    start_day: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``terminals_dark``: from the start day the ``dark`` terminals take no payment; each
    payment meant for one goes to another terminal in the customer's reach, drawn at random
    from ``rng``, or is not made when none is left. Returns the terminals and the mask of
    payments made."""
    terminal, made = tx.terminal.copy(), np.ones(len(tx.terminal), dtype=bool)
    moved = np.flatnonzero((tx.day >= start_day) & dark[tx.terminal])
    pick = rng.random(len(moved))
    for customer in np.unique(tx.customer[moved]):
        reach = customers.terminal_lists[
            customers.terminal_offsets[customer] : customers.terminal_offsets[customer + 1]
        ]
        live = reach[~dark[reach]]
        rows = tx.customer[moved] == customer
        if len(live):
            terminal[moved[rows]] = live[(pick[rows] * len(live)).astype(np.int64)]
        else:
            made[moved[rows]] = False
    return terminal, made


def _night_shift(
    seconds: np.ndarray, *, rng: np.random.Generator, drift: DriftParams
) -> np.ndarray:
    """``night_shift``: from the start day a share of the payments moves to a time of the same
    day between midnight and 6 am."""
    day = seconds // _SECONDS_PER_DAY
    move = (day >= drift.start_day) & (rng.random(len(seconds)) < drift.strength)
    night = rng.integers(0, 6 * 3600, size=len(seconds))
    return np.where(move, day * _SECONDS_PER_DAY + night, seconds)


def _with_scenarios(
    tx: _Transactions,
    customers: _Customers,
    *,
    params: SimulateParams,
    drift_rng: np.random.Generator,
    dark: np.ndarray | None,
    terminal_fraud: Callable[[_Transactions], np.ndarray],
    customer_fraud: Callable[[_Transactions], tuple[np.ndarray, np.ndarray]],
    surge: Callable[[_Transactions], np.ndarray],
) -> dict[str, np.ndarray]:
    """The fraud scenarios and the drift of ``params.drift`` applied to drawn transactions, the
    rows sorted by time: one sequence for the single generator and for every block, which differ
    only in where their draws come from (the callables and generators passed).

    Scenarios are applied in order and a later one overrides the scenario tag of an earlier one:
    1. amount above ``high_amount_threshold``; 2. compromised terminal; 3. compromised customer.
    """
    drift = params.drift
    made = np.ones(len(tx.seconds), dtype=bool)
    if drift.scenario == "terminals_dark":
        # before the labels, which follow the terminal paid at
        terminal, made = _dark_terminals(
            tx, customers, dark=dark, rng=drift_rng, start_day=drift.start_day
        )
        tx = _Transactions(tx.seconds, tx.customer, terminal, tx.amount)
    scenario = np.zeros(len(tx.seconds), dtype=np.int8)
    scenario[tx.amount > params.high_amount_threshold] = SCENARIO_HIGH_AMOUNT
    scenario[terminal_fraud(tx)] = SCENARIO_COMPROMISED_TERMINAL
    compromised_customer, multiplier = customer_fraud(tx)
    if drift.scenario == "terminal_surge":
        scenario[surge(tx) & (scenario == 0)] = SCENARIO_COMPROMISED_TERMINAL
    scenario[compromised_customer] = SCENARIO_COMPROMISED_CUSTOMER
    if drift.scenario == "amount_inflation":
        multiplier = np.where(
            tx.day >= drift.start_day, multiplier * (1 + drift.strength), multiplier
        )
    seconds = tx.seconds
    if drift.scenario == "night_shift":
        # after the labels: they stay with their rows
        seconds = _night_shift(seconds, rng=drift_rng, drift=drift)
    # Payments not made (terminals_dark) go, and moved ones (night_shift) are put back in time
    # order: both only from the start day, so every earlier row keeps its place and its id.
    order = np.flatnonzero(made)[np.argsort(seconds[made], kind="stable")]
    return {
        "seconds": seconds[order],
        "customer": tx.customer[order],
        "terminal": tx.terminal[order],
        "amount": np.round(tx.amount[order] * multiplier[order], 2),
        "scenario": scenario[order],
    }


def simulate_transactions(params: SimulateParams) -> pd.DataFrame:
    """Simulate labelled transactions in the canonical schema, sorted by time, from one
    generator seeded with ``params.seed`` (drift from a generator of its own)."""
    rng = np.random.default_rng(params.seed)
    customers = _customers(rng, params)
    tx = _transactions(rng, customers, params.n_days)
    log.info(
        "drew %d transactions for %d customers over %d days",
        len(tx.seconds),
        params.n_customers,
        params.n_days,
    )
    drift_rng = _drift_rng(params)
    dark = _dark(drift_rng, params) if params.drift.scenario == "terminals_dark" else None
    columns = _with_scenarios(
        tx,
        customers,
        params=params,
        drift_rng=drift_rng,
        dark=dark,
        terminal_fraud=lambda drawn: _compromised_terminal_fraud(rng, drawn, params),
        customer_fraud=lambda drawn: _compromised_customer_fraud(rng, drawn, params),
        surge=lambda drawn: _surge_fraud(drawn, params),
    )
    return _frame(columns, first_id=0, start_date=params.start_date)


def _frame(columns: dict[str, np.ndarray], *, first_id: int, start_date: dt.date) -> pd.DataFrame:
    """Rows in the canonical schema, ids numbered from ``first_id``."""
    start = np.datetime64(start_date.isoformat(), "ns")
    n = len(columns["seconds"])
    return pd.DataFrame(
        {
            schema.TRANSACTION_ID: np.arange(first_id, first_id + n, dtype=np.int64),
            schema.TX_DATETIME: start + columns["seconds"].astype("timedelta64[s]"),
            schema.CUSTOMER_ID: columns["customer"],
            schema.TERMINAL_ID: columns["terminal"],
            schema.TX_AMOUNT: columns["amount"],
            schema.TX_FRAUD: (columns["scenario"] > 0).astype(np.int8),
            "tx_fraud_scenario": columns["scenario"],
        }
    )


# --- Independent blocks of customers (``customers_per_block``) -------------------------------
# Each block of customers is drawn by one task of the engine (``scaleout.engine``: this process
# or a Dask cluster) and written to a scratch file in time order, with its count of rows per
# day; from those counts every output part knows which days its rows come from, and a task per
# part merges those days of every block (time order, ties by block) and numbers the ids. No
# process holds more than a block or a part, and the files are the same on every engine.
#
# What all blocks share (terminals, which terminals and customers are compromised when, the
# drift's dark terminals and surge) is drawn from generators of its own, and each block's
# customers and transactions from one seeded with (seed, _BLOCK_STREAM, block): a block's rows
# are the same whichever process draws it, and in whatever company.
_TERMINAL_STREAM = 2
_SCHEDULE_STREAM = 3
_BLOCK_STREAM = 4
_COMPROMISE_STREAM = 5


def _stream(params: SimulateParams, *keys: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, *keys])


@dataclass(frozen=True)
class _Shared:
    terminals: cKDTree  # terminal locations
    compromised: np.ndarray  # keys terminal * n_days + day of compromised terminals
    compromised_customers: np.ndarray  # (n_days, per day): customers compromised each day
    surge: np.ndarray  # keys, as ``compromised``, of terminal_surge's extra terminals
    dark: np.ndarray  # per terminal: out of service from the start day (terminals_dark)


@functools.lru_cache(maxsize=1)  # a worker drawing many blocks builds it once
def _shared(params: SimulateParams) -> _Shared:
    terminals = _stream(params, _TERMINAL_STREAM).uniform(
        0, _AREA_SIZE, size=(params.n_terminals, 2)
    )
    schedule = _stream(params, _SCHEDULE_STREAM)
    compromised = _compromise_keys(schedule, days=range(params.n_days), params=params)
    per_day = params.compromised_customers_per_day
    customers = np.array(
        [
            schedule.choice(params.n_customers, size=per_day, replace=False)
            for _ in range(params.n_days)
        ],
        dtype=np.int64,
    ).reshape(params.n_days, per_day)
    scenario = params.drift.scenario
    surge = _surge_keys(params) if scenario == "terminal_surge" else np.empty(0, np.int64)
    dark = (
        _dark(_drift_rng(params), params)
        if scenario == "terminals_dark"
        else np.zeros(params.n_terminals, dtype=bool)
    )
    return _Shared(cKDTree(terminals), compromised, customers, surge, dark)


def n_blocks(params: SimulateParams) -> int:
    if params.customers_per_block is None:
        return 1
    return -(-params.n_customers // params.customers_per_block)


def _block_customer_fraud(
    tx: _Transactions, *, first: int, shared: _Shared, params: SimulateParams
) -> tuple[np.ndarray, np.ndarray]:
    """Scenario 3 for one block (customers ``first`` on, local numbers in ``tx``): a third of
    a compromised customer's transactions in the period, drawn from a generator of that
    compromise's own, so the choice depends on the customer's rows alone."""
    n_local = int(tx.customer.max()) + 1 if len(tx.customer) else 0
    by_customer = np.argsort(tx.customer, kind="stable")  # within a customer: time order
    starts = np.searchsorted(tx.customer[by_customer], np.arange(n_local + 1))
    fraud = np.zeros(len(tx.customer), dtype=bool)
    multiplier = np.ones(len(tx.customer))
    days = tx.day
    for day, customers in enumerate(shared.compromised_customers):
        for nth, customer in enumerate(customers):
            local = int(customer) - first
            if not 0 <= local < n_local:
                continue
            rows = by_customer[starts[local] : starts[local + 1]]
            rows = rows[(days[rows] >= day) & (days[rows] < day + params.compromised_customer_days)]
            chosen = _stream(params, _COMPROMISE_STREAM, day, nth).choice(
                rows, size=len(rows) // 3, replace=False
            )
            fraud[chosen] = True
            multiplier[chosen] *= 5
    return fraud, multiplier


def simulate_block(block: int, params: SimulateParams, shared: _Shared | None = None) -> dict:
    """Block ``block``'s transactions, sorted by time (ties in the order drawn), as arrays:
    seconds, customer, terminal, amount, scenario."""
    shared = shared or _shared(params)
    first = block * params.customers_per_block
    n = min(params.customers_per_block, params.n_customers - first)
    rng = _stream(params, _BLOCK_STREAM, block)
    location = rng.uniform(0, _AREA_SIZE, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    mean_tx_per_day = rng.uniform(0, 4, size=n)
    offsets, lists = _reach(location, shared.terminals, radius=params.radius)
    customers = _Customers(mean_amount, mean_amount / 2, mean_tx_per_day, offsets, lists)
    tx = _transactions(rng, customers, params.n_days)
    columns = _with_scenarios(
        tx,
        customers,
        params=params,
        drift_rng=_stream(params, _DRIFT_STREAM, block),
        dark=shared.dark,
        terminal_fraud=lambda drawn: _at_compromised(
            drawn, shared.compromised, n_days=params.n_days
        ),
        customer_fraud=lambda drawn: _block_customer_fraud(
            drawn, first=first, shared=shared, params=params
        ),
        surge=lambda drawn: _at_compromised(drawn, shared.surge, n_days=params.n_days),
    )
    return columns | {"customer": columns["customer"] + first}


def merge_blocks(blocks: list[dict], *, first_id: int, params: SimulateParams) -> pd.DataFrame:
    """Rows of several blocks (each sorted by time) in time order, ties by block, then as
    drawn; ids numbered from ``first_id``."""
    columns = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
    order = np.argsort(columns["seconds"], kind="stable")
    return _frame(
        {name: values[order] for name, values in columns.items()},
        first_id=first_id,
        start_date=params.start_date,
    )


def draw_block(block: int, *, params: SimulateParams, scratch: Path) -> np.ndarray:
    """Simulate task 1: block ``block`` to a scratch file; returns its rows per day."""
    rows = simulate_block(block, params)
    days = rows["seconds"] // _SECONDS_PER_DAY
    write_days(pa.table(rows), scratch / f"{block:05d}.arrow", days=days)  # a part reads its days
    return np.bincount(days, minlength=params.n_days)


def write_simulated_part(
    part: int,
    *,
    params: SimulateParams,
    scratch: Path,
    out: Path,
    day_starts: np.ndarray,
    rows_per_part: int,
) -> int:
    """Simulate task 2: output part ``part``: its rows' days from every block, merged."""
    first_day, last_day, skip = part_days(part, rows_per_part=rows_per_part, day_starts=day_starts)
    tables = [read_days(path, first_day, last_day) for path in sorted(scratch.glob("*.arrow"))]
    blocks = [{name: table[name].to_numpy() for name in table.column_names} for table in tables]
    frame = merge_blocks(blocks, first_id=int(day_starts[first_day]), params=params)
    frame = frame.iloc[skip : skip + rows_per_part]
    write_part(pa.Table.from_pandas(frame, preserve_index=False), out, part)
    return len(frame)


def simulate_dataset(
    engine, out: Path, *, scratch: Path, params: SimulateParams, rows_per_part: int
) -> int:
    """Write the simulated transactions (in blocks) as dataset ``out`` (a directory being
    built) through ``engine``; returns the number of rows."""
    out, scratch = out.resolve(), scratch.resolve()
    blocks = range(n_blocks(params))
    per_day = engine.map(draw_block, blocks, params=params, scratch=scratch)
    day_starts = np.concatenate([[0], np.cumsum(np.sum(per_day, axis=0))])
    n_rows = int(day_starts[-1])
    parts = part_starts(n_rows, rows_per_part)
    log.info(
        "drew %d transactions in %d blocks on the %s engine; writing %d parts",
        n_rows,
        len(blocks),
        engine.kind,
        len(parts),
    )
    engine.map(
        write_simulated_part,
        range(len(parts)),
        params=params,
        scratch=scratch,
        out=out,
        day_starts=day_starts,
        rows_per_part=rows_per_part,
    )
    return n_rows
