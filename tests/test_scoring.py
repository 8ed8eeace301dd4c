"""The service's pieces without HTTP: exact times, the fast model path, jobs scored together."""

from __future__ import annotations

import gc
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from fraudlab.core.params import load_params
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.modeling.artifact import model_artifact
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.serving.app import IdleCollector, parse_time
from fraudlab.serving.clock import Clock
from fraudlab.serving.scorer import Refused, Scorer, ServingConfig, retention_ns, row_scorer
from fraudlab.serving.store import Transaction, open_history
from test_service import PARAMS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-04-01T00:00:01.123456789", "2018-04-01 00:00:01.123456789"),
        ("2018-04-01T00:00:01.1234567", "2018-04-01 00:00:01.1234567"),
        ("2018-04-01T00:00:01,5", "2018-04-01 00:00:01.5"),
        ("2018-04-01T02:30:00+02:00", "2018-04-01 00:30:00"),
        ("2018-04-01T02:30:00.000000001-01:00", "2018-04-01 03:30:00.000000001"),
        ("2018-04-01T00:00:00Z", "2018-04-01 00:00:00"),
        ("2018-04-01 23:59:59", "2018-04-01 23:59:59"),
        ("2018-04-01", "2018-04-01 00:00:00"),
    ],
)
def test_times_are_read_exactly_to_the_nanosecond_in_utc(text, expected):
    assert parse_time(text) == pd.Timestamp(expected).value


@pytest.mark.parametrize(
    "text", ["2018-04-01T00:00:00.1234567891", "1 April 2018", "", "2018-13-01"]
)
def test_times_that_cannot_be_read_exactly_are_refused(text):
    with pytest.raises(ValueError, match=r"precision|ISO 8601"):
        parse_time(text)


@pytest.fixture(scope="module")
def trained(small_transactions):
    features = load_params(PARAMS, "features")["features"]
    train_params = load_params(PARAMS, "train")["train"]
    built = build_features(small_transactions, features)
    return built, features, train_params


@pytest.mark.parametrize("family", ["xgboost", "logistic_regression", "random_forest"])
def test_the_serving_predictor_equals_the_pipeline_bit_for_bit(trained, family):
    built, features, train_params = trained
    params = train_params.model_copy(update={"model": family})
    params = params.model_copy(
        update={
            "xgboost": params.xgboost.model_copy(update={"n_estimators": 10}),
            "random_forest": params.random_forest.model_copy(update={"n_estimators": 10}),
        }
    )
    names = feature_names(features)
    pipeline = fit_pipeline(built.head(8000), names, params=params)
    rows = built.tail(500)
    expected = predict_scores(pipeline, rows, features=names)
    got = row_scorer(pipeline)(rows[names].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(got, expected)
    one = row_scorer(pipeline)(rows[names].to_numpy(dtype=np.float64)[:1])
    if family == "xgboost":
        assert one[0] == expected[0]
    else:  # BLAS takes another path for one row than for many: the last bits may differ
        assert one[0] == pytest.approx(expected[0], rel=1e-12)


@pytest.fixture
def scorer(trained, store_location):
    built, features, train_params = trained
    params = train_params.model_copy(
        update={"xgboost": train_params.xgboost.model_copy(update={"n_estimators": 5})}
    )
    names = feature_names(features)
    pipeline = fit_pipeline(built.head(8000), names, params=params)
    artifact = model_artifact(pipeline, params=params, features=features)
    store = open_history(store_location, fsync=False)
    clock = Clock("data", ahead=400 * DAY, late=DAY, earliest=0)
    yield Scorer(artifact, config=ServingConfig("md5", 0.5, "test"), store=store, clock=clock)
    store.close()


DAY = 86_400 * 10**9


def _tx(tx_id: int, *, seconds: int, customer: int = 1, amount: float = 10.0) -> Transaction:
    return Transaction(
        tx_id, pd.Timestamp("2018-06-01").value + seconds * 10**9, customer, 1, amount
    )


def test_jobs_scored_together_see_each_other_in_time_order(scorer):
    later, earlier = _tx(2, seconds=60), _tx(1, seconds=0)
    (first,), (second,) = scorer.score([[later], [earlier]])
    assert json.loads(second)["features"]["customer_id_nb_tx_1day_window"] == 1
    assert json.loads(first)["features"]["customer_id_nb_tx_1day_window"] == 2


def test_a_conflicting_job_is_refused_whole_and_the_others_go_on(scorer):
    scorer.score([[_tx(1, seconds=0)]])
    outcomes = scorer.score(
        [
            [_tx(2, seconds=1), _tx(1, seconds=0, amount=99.0)],  # conflicts with the store
            [_tx(3, seconds=2), _tx(3, seconds=2, amount=5.0)],  # conflicts with itself
            [_tx(4, seconds=3)],
            [_tx(4, seconds=3, amount=7.0)],  # conflicts with the job before it
        ]
    )
    assert isinstance(outcomes[0], Refused)
    assert outcomes[0].status == 409
    assert isinstance(outcomes[1], Refused)
    assert isinstance(outcomes[2], list)
    assert isinstance(outcomes[3], Refused)
    assert sorted(scorer.store.lookup([1, 2, 3, 4])) == [1, 4]


def test_a_seeded_transaction_posted_again_is_refused(scorer):
    scorer.store.add([_tx(9, seconds=0)])
    (outcome,) = scorer.score([[_tx(9, seconds=0)]])
    assert isinstance(outcome, Refused)
    assert "seeded history" in outcome.message


def test_another_process_writes_are_seen_before_scoring(scorer, store_location):
    with open_history(store_location, fsync=False) as other:
        other.add(transactions_of_customer(7, 3))
    (answer,) = scorer.score([[_tx(100, seconds=3600, customer=7)]])[0]
    assert json.loads(answer)["features"]["customer_id_nb_tx_1day_window"] == 4


def transactions_of_customer(customer: int, n: int) -> list[Transaction]:
    return [_tx(50 + i, seconds=i, customer=customer) for i in range(n)]


def test_old_rows_are_pruned_from_store_and_memory(scorer):
    scorer.score([[_tx(1, seconds=0)]])
    # 200 days later: the first is out of reach of every window (the longest is 90 days)
    scorer.score([[_tx(2, seconds=200 * 86_400)]])
    assert sorted(scorer.store.lookup([1, 2])) == [2]
    assert scorer.live.size() == 1


def _with_clock(scorer: Scorer, clock: Clock) -> Scorer:
    return Scorer(scorer.model, config=scorer.config, store=scorer.store, clock=clock)


def _refused(outcome, *words: str) -> None:
    assert isinstance(outcome, Refused), outcome
    assert outcome.status == 422
    for word in words:
        assert word in outcome.message, outcome.message


def test_a_transaction_outside_the_data_clocks_window_is_refused_and_moves_nothing(scorer):
    """One wrongly dated transaction can neither erase the history (dated years ahead) nor be
    acknowledged and dropped (dated before the retention)."""
    scorer = _with_clock(scorer, Clock("data", ahead=3600 * 10**9, late=DAY, earliest=0))
    scorer.store.add(transactions_of_customer(7, 50))  # 2018-06-01, a second apart
    scorer.live.refresh()
    now = pd.Timestamp("2026-12-07T10:00:00").value
    (ahead,), (old,) = (scorer.score([[Transaction(1, t, 7, 1, 5.0)]]) for t in
                        (now, pd.Timestamp("2001-01-01").value))  # fmt: skip
    _refused(ahead, "2026-12-07T10:00:00 is later than the accepted window",
             "2018-05-31T00:00:49 .. 2018-06-01T01:00:49", "--max-ahead")  # fmt: skip
    _refused(old, "2001-01-01T00:00:00 is older than the accepted window", "--max-late 1 day")
    assert scorer.store.count() == 50
    assert scorer.live.newest == _tx(0, seconds=49).time
    # the card's history is whole: the next transaction sees all 50 rows
    (answer,) = scorer.score([[_tx(200, seconds=60, customer=7)]])[0]
    assert json.loads(answer)["features"]["customer_id_nb_tx_1day_window"] == 51


def test_the_data_clock_moves_one_bounded_step_per_transaction(scorer):
    hour = 3600 * 10**9
    scorer = _with_clock(scorer, Clock("data", ahead=hour, late=DAY, earliest=0))
    scorer.score([[_tx(1, seconds=0)]])
    # a batch reaching 3 hours ahead in steps of 50 minutes: each within an hour of the last
    steps = [_tx(2 + k, seconds=3000 * (k + 1)) for k in range(4)]
    assert isinstance(scorer.score([steps])[0], list)
    # 61 minutes past the newest: refused, and the refused job does not move the clock
    jump = [_tx(10, seconds=12_000 + 3660), _tx(11, seconds=12_000 + 7200)]
    _refused(scorer.score([jump])[0], "later than the accepted window")
    _refused(scorer.score([[_tx(11, seconds=12_000 + 7200)]])[0], "later than")
    assert scorer.live.newest == _tx(0, seconds=12_000).time


def test_the_system_clock_bounds_times_and_retention_whatever_the_data(scorer):
    now = pd.Timestamp("2018-06-01T12:00:00").value
    minute = 60 * 10**9
    clock = Clock("system", ahead=5 * minute, late=DAY, earliest=0, system_ns=lambda: now)
    scorer = _with_clock(scorer, clock)
    _refused(scorer.score([[Transaction(1, now + 6 * minute, 1, 1, 1.0)]])[0], "later than")
    _refused(scorer.score([[Transaction(2, now - DAY - 1, 1, 1, 1.0)]])[0], "older than")
    assert isinstance(scorer.score([[Transaction(3, now + 5 * minute, 1, 1, 1.0)]])[0], list)
    assert isinstance(scorer.score([[Transaction(4, now - DAY, 1, 1, 1.0)]])[0], list)
    assert sorted(scorer.store.lookup([1, 2, 3, 4])) == [3, 4]


def test_retention_keeps_every_row_an_accepted_transaction_can_read(scorer):
    """Rows are deleted once older than the clock minus the longest window minus the
    lateness accepted: the oldest transaction still accepted finds every row of its windows."""
    scorer = _with_clock(scorer, Clock("data", ahead=400 * DAY, late=DAY, earliest=0))
    keep = retention_ns(scorer.params, scorer.clock)
    start = _tx(0, seconds=0).time
    inside, outside = start + 10**9, start - 10**9  # around the horizon the move below sets
    # two writes (Redis prunes a write's rows together, once the newest is out of reach)
    scorer.store.add([Transaction(1, outside, 7, 1, 1.0)])
    scorer.store.add([Transaction(2, inside, 7, 1, 1.0)])
    scorer.live.refresh()
    now = start + keep  # the horizon is now - keep = start
    scorer.score([[Transaction(3, now, 8, 2, 1.0)]])
    assert sorted(scorer.store.lookup([1, 2, 3])) == [2, 3]
    # the oldest time accepted, on the card: its longest window still holds row 2
    oldest = now - scorer.clock.late
    assert oldest - (keep - scorer.clock.late) < inside
    (answer,) = scorer.score([[Transaction(4, oldest, 7, 1, 1.0)]])[0]
    assert json.loads(answer)["features"]["customer_id_amount_over_mean_90day_window"] == 1.0
    _refused(scorer.score([[Transaction(5, oldest - 1, 7, 1, 1.0)]])[0], "older than")


def test_a_late_transaction_is_scored_without_the_later_ones_and_counted(scorer):
    scorer.score([[_tx(2, seconds=60)], [_tx(3, seconds=120)]])
    (answer,), (other,) = scorer.score([[_tx(1, seconds=0)], [_tx(4, seconds=90, customer=2)]])
    assert json.loads(answer)["features"]["customer_id_nb_tx_1day_window"] == 1
    assert json.loads(answer)["features"]["customer_id_avg_amount_1day_window"] == 10.0
    assert json.loads(other)["features"]["customer_id_nb_tx_1day_window"] == 1
    assert scorer.last_late == 1
    # and the one after it still sees both earlier ones: the copy in memory is in order
    (after,) = scorer.score([[_tx(5, seconds=30)]])[0]
    assert json.loads(after)["features"]["customer_id_nb_tx_1day_window"] == 2
    assert scorer.live.cards[1].ids.tolist() == [1, 5, 2, 3]


def test_garbage_is_collected_between_rounds_only_when_idle_or_past_the_limit():
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    with IdleCollector(young=100, busy_limit=5_000) as collector:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what was loaded is out of every collection
        for _ in range(1_000):
            Cycle()
        pending = gc.get_count()[0]
        assert pending >= 1_000
        collector.after_round(idle=False)  # busy, below the limit: no pause
        assert gc.get_count()[0] >= pending
        collector.after_round(idle=True)
        assert gc.get_count()[0] < 100
        for _ in range(6_000):
            Cycle()
        collector.after_round(idle=False)  # busy past the limit: collected anyway
        assert gc.get_count()[0] < 100
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_failed_write_leaves_the_state_and_the_clock_as_they_were(scorer, monkeypatch):
    scorer.score([[_tx(1, seconds=0)]])
    before = (scorer.live.newest, scorer.live.size())

    def fail(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(scorer.store, "add_scored", fail)
    with pytest.raises(sqlite3.OperationalError):
        scorer.score([[_tx(2, seconds=60), _tx(3, seconds=120, customer=2)]])
    assert (scorer.live.newest, scorer.live.size()) == before
    monkeypatch.undo()
    (answer,) = scorer.score([[_tx(4, seconds=180)]])[0]
    assert json.loads(answer)["features"]["customer_id_nb_tx_1day_window"] == 2


def test_a_round_another_replica_overtook_is_computed_again_with_its_write(scorer):
    """On a shared store, a replica whose write lands between another's read and write makes
    that write stale: the round is refused, then computed again with the new row taken in."""
    if scorer.store.kind != "redis":
        pytest.skip("a SQLite store is locked from read to write: no round is overtaken")
    scorer.score([[_tx(1, seconds=0)]])
    with open_history(scorer.store.url, fsync=False) as shared:
        other = Scorer(scorer.model, config=scorer.config, store=shared, clock=scorer.clock)
        predict, overtaken = scorer.predict, []

        def overtake(matrix):  # between this round's read and its write
            if not overtaken:
                overtaken.append(other.score([[_tx(2, seconds=30)]]))
            return predict(matrix)

        scorer.predict = overtake
        (answer,) = scorer.score([[_tx(3, seconds=60)]])[0]
    assert scorer.last_stale == 1
    assert json.loads(answer)["features"]["customer_id_nb_tx_1day_window"] == 3  # 1, 2 and 3
    assert sorted(scorer.store.lookup([1, 2, 3])) == [1, 2, 3]
