"""Vectorized transaction simulator (the handbook's generator, re-derived from its description).

Customers and terminals sit on a 100 x 100 square; a customer pays at terminals within
``radius``. Every random draw comes from one ``numpy.random.Generator`` seeded from params, in a
fixed order, so the output is a pure function of the params. A drift scenario (``params.drift``)
draws from a generator of its own, after all the others: the world before its start day, and
with ``none`` the whole output, is the same as without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from fraudlab import schema
from fraudlab.params import SimulateParams

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
    in_range = cKDTree(terminal_location).query_ball_point(
        location, r=params.radius, return_sorted=True
    )
    counts = np.fromiter((len(t) for t in in_range), dtype=np.int64, count=n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lists = np.fromiter((t for ts in in_range for t in ts), dtype=np.int64, count=offsets[-1])
    return _Customers(mean_amount, mean_amount / 2, mean_tx_per_day, offsets, lists)


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
    compromised = np.zeros((params.n_terminals, params.n_days), dtype=bool)
    for day in range(params.n_days):
        terminals = rng.choice(
            params.n_terminals, size=params.compromised_terminals_per_day, replace=False
        )
        compromised[terminals, day : day + params.compromised_terminal_days] = True
    return compromised[tx.terminal, tx.day]


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
    drift = params.drift
    extra = round(drift.strength * params.compromised_terminals_per_day)
    rng = _drift_rng(params)
    compromised = np.zeros((params.n_terminals, params.n_days), dtype=bool)
    for day in range(drift.start_day, params.n_days):
        terminals = rng.choice(params.n_terminals, size=extra, replace=False)
        compromised[terminals, day : day + params.compromised_terminal_days] = True
    return compromised[tx.terminal, tx.day]


def _drift_rng(params: SimulateParams) -> np.random.Generator:
    return np.random.default_rng([params.seed, _DRIFT_STREAM])


def _dark_terminals(
    tx: _Transactions, customers: _Customers, params: SimulateParams
) -> tuple[np.ndarray, np.ndarray]:
    """``terminals_dark``: from the start day a share of the terminals takes no payment; each
    payment meant for one goes to another terminal in the customer's reach, drawn at random, or
    is not made when none is left. Returns the terminals and the mask of payments made."""
    drift = params.drift
    rng = _drift_rng(params)
    dark = rng.random(params.n_terminals) < drift.strength
    terminal, made = tx.terminal.copy(), np.ones(len(tx.terminal), dtype=bool)
    moved = np.flatnonzero((tx.day >= drift.start_day) & dark[tx.terminal])
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


def _night_shift(seconds: np.ndarray, params: SimulateParams) -> np.ndarray:
    """``night_shift``: from the start day a share of the payments moves to a time of the same
    day between midnight and 6 am."""
    drift = params.drift
    rng = _drift_rng(params)
    day = seconds // _SECONDS_PER_DAY
    move = (day >= drift.start_day) & (rng.random(len(seconds)) < drift.strength)
    night = rng.integers(0, 6 * 3600, size=len(seconds))
    return np.where(move, day * _SECONDS_PER_DAY + night, seconds)


def simulate_transactions(params: SimulateParams) -> pd.DataFrame:
    """Simulate labelled transactions in the canonical schema, sorted by time.

    Scenarios are applied in order and a later one overrides the scenario tag of an earlier one:
    1. amount above ``high_amount_threshold``; 2. compromised terminal; 3. compromised customer.
    """
    rng = np.random.default_rng(params.seed)
    customers = _customers(rng, params)
    tx = _transactions(rng, customers, params.n_days)
    made = np.ones(len(tx.seconds), dtype=bool)
    if params.drift.scenario == "terminals_dark":
        # before the labels, which follow the terminal paid at; no draw of ``rng`` depends on it
        terminal, made = _dark_terminals(tx, customers, params)
        tx = _Transactions(tx.seconds, tx.customer, terminal, tx.amount)
    log.info(
        "drew %d transactions for %d customers over %d days",
        len(tx.seconds),
        params.n_customers,
        params.n_days,
    )

    scenario = np.zeros(len(tx.seconds), dtype=np.int8)
    scenario[tx.amount > params.high_amount_threshold] = SCENARIO_HIGH_AMOUNT
    scenario[_compromised_terminal_fraud(rng, tx, params)] = SCENARIO_COMPROMISED_TERMINAL
    customer_fraud, multiplier = _compromised_customer_fraud(rng, tx, params)
    if params.drift.scenario == "terminal_surge":
        surge = _surge_fraud(tx, params) & (scenario == 0)
        scenario[surge] = SCENARIO_COMPROMISED_TERMINAL
    scenario[customer_fraud] = SCENARIO_COMPROMISED_CUSTOMER
    if params.drift.scenario == "amount_inflation":
        multiplier = np.where(
            tx.day >= params.drift.start_day, multiplier * (1 + params.drift.strength), multiplier
        )

    seconds = tx.seconds
    if params.drift.scenario == "night_shift":
        seconds = _night_shift(seconds, params)  # after the labels: they stay with their rows

    start = np.datetime64(params.start_date.isoformat(), "ns")
    # Payments not made (terminals_dark) go, and moved ones (night_shift) are put back in time
    # order: both only from the start day, so every earlier row keeps its place and its id.
    order = np.flatnonzero(made)[np.argsort(seconds[made], kind="stable")]
    return pd.DataFrame(
        {
            schema.TRANSACTION_ID: np.arange(len(order), dtype=np.int64),
            schema.TX_DATETIME: start + seconds[order].astype("timedelta64[s]"),
            schema.CUSTOMER_ID: tx.customer[order],
            schema.TERMINAL_ID: tx.terminal[order],
            schema.TX_AMOUNT: np.round(tx.amount[order] * multiplier[order], 2),
            schema.TX_FRAUD: (scenario[order] > 0).astype(np.int8),
            "tx_fraud_scenario": scenario[order],
        }
    )
