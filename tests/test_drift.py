"""Drift statistics on hand-made columns: bins, PSI, KS and Wasserstein."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fraudlab.monitoring.drift import (
    ColumnProfile,
    DriftWindow,
    bin_shares,
    drift,
    ks_statistic,
    profile,
    psi,
    reference_profile,
    wasserstein,
)


def test_a_flag_gets_two_edges_and_its_shares():
    column = profile(np.array([0] * 7 + [1] * 3))
    # deciles 0.1-0.7 are 0, 0.8-1.0 are 1: bins (-inf, 0], (0, 1], (1, inf)
    assert column.edges == (0.0, 1.0)
    assert column.shares == pytest.approx((0.7, 0.3, 0.0))
    assert column.mean == pytest.approx(0.3)


def test_values_on_an_edge_fall_in_the_bin_below():
    assert bin_shares(np.array([1.0, 2.0, 2.5, 3.0, 9.0]), (2.0, 3.0)).tolist() == [
        0.4,  # 1.0 and 2.0: (-inf, 2]
        0.4,  # 2.5 and 3.0: (2, 3]
        0.2,  # 9.0: (3, inf)
    ]


def test_psi_by_hand():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.1733 + 0.1014
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2747, abs=1e-3)
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_a_sample_of_the_reference_does_not_drift_and_a_shifted_one_does():
    rng = np.random.default_rng(0)
    reference = profile(rng.normal(10.0, 2.0, size=50_000))
    same = drift(reference, rng.normal(10.0, 2.0, size=20_000))
    assert same.psi < 0.01
    assert same.ks < 0.03
    assert same.wasserstein < 0.05
    shifted = drift(reference, rng.normal(12.0, 2.0, size=20_000))  # one standard deviation
    assert shifted.psi > 0.25
    assert shifted.ks == pytest.approx(0.38, abs=0.03)  # 2 Phi(0.5) - 1
    assert shifted.wasserstein == pytest.approx(1.0, abs=0.05)


def test_a_constant_reference_still_sees_a_change():
    reference = profile(np.zeros(100))
    assert reference.edges == (0.0,)
    moved = drift(reference, np.ones(100))
    assert moved.psi > 1
    assert moved.ks == 1.0
    assert moved.wasserstein == 1.0  # no spread to divide by: the raw distance


@pytest.mark.parametrize(
    ("values", "problem"),
    [(np.array([]), "no values"), (np.array([1.0, np.nan, np.inf]), "2 values are not finite")],
)
def test_bad_columns_are_refused_by_name(values, problem):
    with pytest.raises(ValueError, match=f"tx_amount: {problem}"):
        profile(values, name="tx_amount")


def test_a_profile_survives_a_round_trip_through_json_types():
    column = profile(np.random.default_rng(1).exponential(size=1000))
    assert ColumnProfile.from_dict(column.to_dict()) == column


def test_the_drift_window_is_the_psi_of_its_last_rows_whatever_the_rounds():
    rng = np.random.default_rng(3)
    reference = reference_profile(
        {"a": rng.normal(size=4000), "flag": (rng.uniform(size=4000) < 0.2).astype(float)},
        scores=rng.uniform(size=4000),
    )
    # rows come in the model's order, which need not be the profile's (JSON sorts its keys)
    window = DriftWindow(reference, features=["flag", "a"], size=50, threshold=0.9)
    assert window.psi() == {}
    rows, scores = np.empty((0, 2)), np.empty(0)
    rounds = (1, 7, 30, 13, 0, 49, 50, 120, 3, 20, 20, 20, 9)  # fills, wraps, above the size
    for number, n in enumerate(rounds):
        new = np.column_stack([rng.uniform(size=n) < 0.5, rng.normal(0.5, 1, n)])
        new_scores = rng.uniform(size=n)
        window.add(new, new_scores)
        rows, scores = np.vstack([rows, new])[-50:], np.r_[scores, new_scores][-50:]
        if number % 3 == 1:
            continue  # the counts catch up over several rounds at the next read
        profiles = {**reference.features, "score": reference.score}
        values = {"flag": rows[:, 0], "a": rows[:, 1], "score": scores}
        expected = {
            name: psi(profiles[name].shares, bin_shares(v, profiles[name].edges))
            for name, v in values.items()
        }
        assert window.filled == len(scores)
        assert window.psi() == pytest.approx(expected, rel=1e-12)
        assert window.alerted == int((scores >= 0.9).sum())


def test_a_drift_window_needs_room_for_a_transaction():
    reference = reference_profile({"a": np.arange(10.0)}, scores=np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="at least one transaction"):
        DriftWindow(reference, features=["a"], size=0, threshold=0.5)
    with pytest.raises(ValueError, match="the reference profiles"):
        DriftWindow(reference, features=["a", "b"], size=10, threshold=0.5)


@pytest.mark.parametrize("n", [1, 2, 7, 999, 1000, 1001, 4321])
def test_ks_and_wasserstein_are_scipys_on_continuous_and_tied_samples(n):
    """Read from one sorted sample, they equal scipy's ks_2samp and wasserstein_distance."""
    rng = np.random.default_rng(n)
    for reference, sample in (
        (rng.gamma(2, 30, 20_000), rng.gamma(2, 33, n)),
        (rng.poisson(3, 20_000).astype(float), rng.poisson(3.4, n).astype(float)),
    ):
        stand_in = np.asarray(profile(reference).quantiles)
        ordered = np.sort(sample)
        assert ks_statistic(stand_in, ordered) == pytest.approx(
            stats.ks_2samp(stand_in, sample).statistic, abs=1e-12
        )
        assert wasserstein(stand_in, ordered) == pytest.approx(
            stats.wasserstein_distance(stand_in, sample), rel=1e-9
        )
