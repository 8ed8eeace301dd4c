"""The simulator: determinism, the scenarios' rules, and reference-like volumes and fraud rate."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import small_simulate_params
from fraudlab.core import schema
from fraudlab.data.simulate import merge_blocks, n_blocks, simulate_block, simulate_transactions

# The reference customer and terminal density (SPEC §3) over 60 days instead of 183.
REFERENCE_DENSITY = {
    "n_customers": 5000,
    "n_terminals": 10000,
    "n_days": 60,
    "radius": 5.0,
    "compromised_terminals_per_day": 2,
    "compromised_customers_per_day": 3,
    "seed": 1,
}


@pytest.fixture(scope="module")
def reference_density():
    return simulate_transactions(small_simulate_params(**REFERENCE_DENSITY))


def test_volumes_and_fraud_rate_land_close_to_the_reference(reference_density):
    per_day = reference_density.groupby(reference_density["tx_datetime"].dt.floor("D")).agg(
        transactions=("tx_fraud", "size"), frauds=("tx_fraud", "sum")
    )
    assert len(per_day) == 60
    # reference: ~9,600 transactions a day; ~80 frauds a day once scenario 2 (28 days) is
    # in steady state; 0.837 % frauds over 183 days
    assert 9_000 < per_day["transactions"].mean() < 10_200
    steady = per_day.iloc[30:]
    assert 60 < steady["frauds"].mean() < 100
    assert 0.006 < steady["frauds"].sum() / steady["transactions"].sum() < 0.011


def test_same_seed_same_data_other_seed_other_data():
    params = small_simulate_params()
    pd.testing.assert_frame_equal(simulate_transactions(params), simulate_transactions(params))
    other = simulate_transactions(small_simulate_params(seed=8))
    assert (
        not other["tx_amount"]
        .head(100)
        .equals(simulate_transactions(params)["tx_amount"].head(100))
    )


def test_schema_order_and_ranges(small_transactions):
    frame = small_transactions
    assert tuple(frame.columns[:6]) == schema.REQUIRED_COLUMNS
    assert frame["transaction_id"].tolist() == list(range(len(frame)))
    assert frame["tx_datetime"].is_monotonic_increasing
    assert (frame["tx_amount"] >= 0).all()
    assert (frame["tx_amount"].round(2) == frame["tx_amount"]).all()
    assert frame["tx_datetime"].min() >= pd.Timestamp("2018-04-01")
    assert frame["tx_datetime"].max() < pd.Timestamp("2018-04-01") + pd.Timedelta(days=50)


def test_scenario_rules(small_transactions):
    frame = small_transactions
    assert ((frame["tx_fraud_scenario"] > 0) == (frame["tx_fraud"] == 1)).all()
    high = frame[frame["tx_fraud_scenario"] == 1]
    assert (high["tx_amount"] > 220).all()
    # nothing above the threshold escapes being fraud (scenarios 2 and 3 may override the tag)
    assert (frame.loc[frame["tx_amount"] > 220, "tx_fraud"] == 1).all()
    # a compromised terminal's fraud lasts: after its first scenario-2 fraud, every transaction
    # there within the next 27 days is fraud
    terminal_frauds = frame[frame["tx_fraud_scenario"] == 2]
    assert not terminal_frauds.empty
    terminal = terminal_frauds["terminal_id"].iloc[0]
    first_day = terminal_frauds["tx_datetime"].iloc[0].floor("D")
    there = frame[
        (frame["terminal_id"] == terminal)
        & (frame["tx_datetime"] >= first_day)
        & (frame["tx_datetime"] < first_day + pd.Timedelta(days=28))
    ]
    assert (there["tx_fraud"] == 1).all()
    assert frame["tx_fraud_scenario"].isin([0, 1, 2, 3]).all()
    assert (frame["tx_fraud_scenario"] == 3).any()


@pytest.fixture(scope="module")
def undrifted() -> pd.DataFrame:
    return simulate_transactions(small_simulate_params())


def _drifted(scenario: str, *, start_day: int = 30, strength: float = 0.5) -> pd.DataFrame:
    drift = {"scenario": scenario, "start_day": start_day, "strength": strength}
    return simulate_transactions(small_simulate_params(drift=drift))


def _from_day(frame: pd.DataFrame, day: int) -> pd.Series:
    return frame[schema.TX_DATETIME] >= pd.Timestamp("2018-04-01") + pd.Timedelta(days=day)


def test_no_drift_is_the_data_of_any_start_day_and_strength(undrifted):
    for start_day, strength in ((0, 1.0), (45, 3.0)):
        other = _drifted("none", start_day=start_day, strength=strength)
        pd.testing.assert_frame_equal(other, undrifted)


def test_amount_inflation_changes_only_later_amounts(undrifted):
    drifted = _drifted("amount_inflation")
    later = _from_day(undrifted, 30)
    pd.testing.assert_frame_equal(drifted[~later], undrifted[~later])
    columns = [c for c in undrifted.columns if c != schema.TX_AMOUNT]
    pd.testing.assert_frame_equal(drifted[columns], undrifted[columns])  # labels unchanged
    ratio = drifted.loc[later, schema.TX_AMOUNT] / undrifted.loc[later, schema.TX_AMOUNT]
    big = undrifted.loc[later, schema.TX_AMOUNT] > 10  # rounding to cents blurs small ones
    assert ratio[big].between(1.49, 1.51).all()


def test_terminal_surge_adds_frauds_from_its_start_day_only(undrifted):
    drifted = _drifted("terminal_surge", strength=2.0)  # 2 more terminals a day
    later = _from_day(undrifted, 30)
    pd.testing.assert_frame_equal(drifted[~later], undrifted[~later])
    before, after = undrifted[schema.TX_FRAUD], drifted[schema.TX_FRAUD]
    assert (after >= before).all()  # every fraud stays a fraud
    added = (after > before) & later
    # a surge: the fraud rate after its start rises by half (its compromises ramp up over the
    # 28 days a terminal stays compromised, and the data end 20 days after the start)
    assert after[later].sum() > 1.4 * before[later].sum()
    assert (drifted.loc[added, "tx_fraud_scenario"] == 2).all()
    columns = [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TERMINAL_ID, schema.TX_AMOUNT]
    pd.testing.assert_frame_equal(drifted[columns], undrifted[columns])


def test_night_shift_moves_later_payments_to_the_night_of_the_same_day(undrifted):
    drifted = _drifted("night_shift", strength=0.5)
    later = _from_day(undrifted, 30)
    assert len(drifted) == len(undrifted)
    pd.testing.assert_frame_equal(drifted[~later], undrifted[~later])
    hours = drifted.loc[later, schema.TX_DATETIME].dt.hour
    before = undrifted.loc[later, schema.TX_DATETIME].dt.hour
    assert (before < 6).mean() < 0.2
    assert (hours < 6).mean() > 0.5  # half moved, plus the night's own
    assert drifted[schema.TX_DATETIME].is_monotonic_increasing
    assert drifted[schema.TRANSACTION_ID].tolist() == list(range(len(drifted)))
    # the same payments (customer, terminal, amount, label) on the same days, times aside
    key = [schema.CUSTOMER_ID, schema.TERMINAL_ID, schema.TX_AMOUNT, schema.TX_FRAUD]
    moved, kept = (
        f.assign(day=f[schema.TX_DATETIME].dt.floor("D"))
        .sort_values([*key, "day"])[[*key, "day"]]
        .reset_index(drop=True)
        for f in (drifted, undrifted)
    )
    pd.testing.assert_frame_equal(moved, kept)


def test_terminals_dark_take_no_payment_after_the_start_day(undrifted):
    drifted = _drifted("terminals_dark", strength=0.3)
    later = _from_day(drifted, 30)
    pd.testing.assert_frame_equal(
        drifted[~later], undrifted[~_from_day(undrifted, 30)], check_index_type=False
    )
    active = set(undrifted.loc[~_from_day(undrifted, 30), schema.TERMINAL_ID])
    still = set(drifted.loc[later, schema.TERMINAL_ID])
    gone = len(active - still) / len(active)
    assert 0.25 < gone < 0.4  # about the share taken out (and few idle by chance)
    # payments move to the terminals left: more per terminal, a few lost with nowhere to go
    per_terminal = drifted.loc[later].groupby(schema.TERMINAL_ID).size().mean()
    undrifted_later = undrifted.loc[_from_day(undrifted, 30)]
    assert per_terminal > 1.2 * undrifted_later.groupby(schema.TERMINAL_ID).size().mean()
    assert 0.9 * len(undrifted_later) < later.sum() <= len(undrifted_later)


def test_a_share_scenario_refuses_a_strength_above_one():
    with pytest.raises(ValueError, match="strength is a share for night_shift"):
        small_simulate_params(drift={"scenario": "night_shift", "start_day": 3, "strength": 1.5})


def _in_blocks(params) -> pd.DataFrame:
    blocks = [simulate_block(block, params) for block in range(n_blocks(params))]
    return merge_blocks(blocks, first_id=0, params=params)


def test_blocks_of_customers_draw_a_world_like_one_generators(reference_density):
    """Blocks (independent generators per 1,000 customers) change the draws, not the world:
    the same volumes, fraud rate and mix of scenarios as one generator for all."""
    blocks = _in_blocks(small_simulate_params(**REFERENCE_DENSITY, customers_per_block=1000))
    assert abs(len(blocks) / len(reference_density) - 1) < 0.03
    assert abs(blocks["tx_fraud"].mean() / reference_density["tx_fraud"].mean() - 1) < 0.25
    for scenario in (1, 2, 3):
        ours = (blocks["tx_fraud_scenario"] == scenario).mean()
        theirs = (reference_density["tx_fraud_scenario"] == scenario).mean()
        assert 0.5 < ours / theirs < 2, scenario
    assert blocks[schema.TRANSACTION_ID].tolist() == list(range(len(blocks)))
    assert blocks[schema.TX_DATETIME].is_monotonic_increasing


@pytest.mark.parametrize(
    "scenario", ["amount_inflation", "terminal_surge", "night_shift", "terminals_dark"]
)
def test_a_drift_in_blocks_leaves_the_days_before_its_start_alone(scenario):
    params = small_simulate_params(customers_per_block=40)
    undrifted = _in_blocks(params)
    strength = 0.5 if scenario in ("night_shift", "terminals_dark") else 2.0
    drift = {"scenario": scenario, "start_day": 30, "strength": strength}
    drifted = _in_blocks(small_simulate_params(customers_per_block=40, drift=drift))
    before, after = ~_from_day(undrifted, 30), _from_day(drifted, 30)
    pd.testing.assert_frame_equal(drifted[~after], undrifted[before], check_index_type=False)
    later = drifted[after].reset_index(drop=True)
    same = undrifted[~before].reset_index(drop=True)
    assert len(later) != len(same) or not later.equals(same)
