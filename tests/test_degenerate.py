"""Degenerate data and a full disk: one line naming the period, param or file, exit 1, nothing
written, never a traceback."""

from __future__ import annotations

import datetime as dt
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import STORAGE_YAML, transactions
from fraudlab.core.params import SplitParams
from fraudlab.features.names import feature_names
from fraudlab.modeling.pipeline import TrainingDataError, fit_pipeline
from fraudlab.modeling.split import SplitError, prequential_folds
from fraudlab.stages.split import split
from helpers import features_with, features_yaml, run_stage
from test_models import FAMILIES, _train_params

SPLIT_PARAMS = (
    "split: {train_start: '2018-04-10', train_days: 2, test_days: 2, n_folds: 1, test_folds: 1}\n"
    + features_yaml(
        customer_windows_days=[1], terminal_windows_days=[1], label_delay_days=1, night_end_hour=6
    )
)
# day 0 = 2018-04-10: train days 0-1, gap day 2, test days 3-4; fold 0 trains on days -3..-2
# and validates on days 0-1 (the training period: its labels are known when training).


def _run_split(
    tmp_path: Path, caplog, frame: pd.DataFrame, params_text: str = SPLIT_PARAMS
) -> tuple[int, list[Path]]:
    features = tmp_path / "features.parquet"
    frame.to_parquet(features)
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    outs = [tmp_path / "out" / n for n in ("train.parquet", "test.parquet", "f.parquet", "s.json")]
    argv = [str(features), "--params", str(params)]
    argv += ["--train", str(outs[0]), "--test", str(outs[1]), "--folds", str(outs[2])]
    argv += ["--summary", str(outs[3])]
    return run_stage(split, argv, caplog), outs


def _days(rows: list[tuple[int, str, int]]) -> pd.DataFrame:
    """Rows of (day, customer, fraud) from 2018-04-10, one transaction each at noon."""
    start = dt.datetime(2018, 4, 10, 12)
    return transactions(
        [
            (i, (start + dt.timedelta(days=day)).strftime("%Y-%m-%d %H:%M"), card, 1, 1.0, fraud)
            for i, (day, card, fraud) in enumerate(rows, start=1)
        ]
    )


# Folds and test periods with both classes, to be broken one at a time below.
HEALTHY = [
    (-3, "a", 1),
    (-3, "b", 0),
    (-2, "b", 0),
    (0, "e", 1),
    (0, "f", 0),
    (1, "f", 0),
    (3, "g", 1),
    (3, "h", 0),
    (4, "h", 0),
]


def _error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, caplog.text
    assert "Traceback" not in caplog.text
    return errors[0]


def test_the_healthy_layout_splits(tmp_path, caplog):
    code, outs = _run_split(tmp_path, caplog, _days(HEALTHY))
    assert code == 0, caplog.text
    assert all(p.exists() for p in outs)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            # every test transaction belongs to card e, whose day-0 fraud is known by day 3
            [r for r in HEALTHY if r[0] < 3] + [(3, "e", 0), (4, "e", 1)],
            r"no transactions left in the test period \(2018-04-13\.\.2018-04-14\): all 2 belong "
            r"to cards already known to be compromised; move split.train_start",
        ),
        (
            [(d, c, 0 if d in (0, 1) else f) for d, c, f in HEALTHY],
            r"the training period \(2018-04-10\.\.2018-04-11\) holds no frauds among its 3 "
            r"transactions: move split.train_start",
        ),
        (
            [(d, c, 0 if d >= 3 else f) for d, c, f in HEALTHY],
            r"the test period \(2018-04-13\.\.2018-04-14\) holds no frauds among its 3",
        ),
        (
            [(d, c, 1 if d in (0, 1) else f) for d, c, f in HEALTHY],
            r"the training period \(2018-04-10\.\.2018-04-11\) holds no legitimate transactions",
        ),
        (
            [(d, c, 0 if d < 0 else f) for d, c, f in HEALTHY],
            r"the training period of fold 0 \(2018-04-07\.\.2018-04-08\) holds no frauds",
        ),
        (
            # card a's day -3 fraud is known to fold 0's validation: its day-0 fraud is removed
            # there (the test split's training period keeps it)
            [(d, "a" if (d, c) == (0, "e") else c, f) for d, c, f in HEALTHY],
            r"the validation period of fold 0 \(2018-04-10\.\.2018-04-11\) holds no frauds "
            r"among its 2 transactions",
        ),
        (
            [(d, "solo", f) for d, _, f in HEALTHY],  # a single customer
            r"no transactions left in the test period",
        ),
    ],
    ids=[
        "test-empty-after-card-removal",
        "train-no-frauds",
        "test-no-frauds",
        "train-all-frauds",
        "fold-train-no-frauds",
        "fold-valid-no-frauds",
        "single-customer",
    ],
)
def test_degenerate_periods_are_one_line_errors(tmp_path, caplog, rows, message):
    code, outs = _run_split(tmp_path, caplog, _days(rows))
    assert code == 1
    assert re.search(message, _error(caplog))
    assert not any(p.exists() for p in outs)


def test_no_transactions_in_the_training_window(tmp_path, caplog, small_transactions):
    params = SPLIT_PARAMS.replace("'2018-04-10'", "'2019-01-01'")
    code, outs = _run_split(tmp_path, caplog, small_transactions, params)
    assert code == 1
    # the span check speaks first, naming the days the protocol needs
    assert _error(caplog) == (
        "split failed: the data end on 2018-05-20 but the test period runs to 2019-01-05: move "
        "split.train_start 230 days earlier, or lower split.test_days (the protocol needs 98 "
        "days, 2018-09-30..2019-01-06; for these data split.train_start can be "
        "2018-04-04..2018-05-16, none with full feature windows (48 days short))"
    )
    assert not any(p.exists() for p in outs)


def test_a_fold_emptied_by_card_removal_names_the_fold():
    # fold 0 validates on days 0-1; its cards c and d had frauds on day -3 (known by day 0)
    rows = [(-3, "c", 1), (-3, "d", 1), (-3, "x", 0), (-2, "x", 0), (0, "c", 0), (1, "d", 0)]
    params = SplitParams(
        train_start=dt.date(2018, 4, 10), train_days=2, test_days=2, n_folds=1, test_folds=1
    )
    with pytest.raises(SplitError, match=r"left in the validation period of fold 0 \(2018-04-10"):
        prequential_folds(_days(rows), params, delay_days=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_refuses_one_class_the_same_way(family):
    params = features_with(
        customer_windows_days=[1], terminal_windows_days=[1], label_delay_days=1, night_end_hour=6
    )
    names = feature_names(params)
    rows = pd.DataFrame(np.ones((20, len(names))), columns=names).assign(tx_fraud=0)
    with pytest.raises(TrainingDataError, match=rf"cannot fit {family}: the 20 training rows"):
        fit_pipeline(rows, names, params=_train_params(family))


def _limit_file_size() -> None:
    # A file-size limit makes writes past it fail with EFBIG, as a full disk fails with ENOSPC;
    # SIGXFSZ would otherwise kill the process before Python sees the error.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


def test_a_write_that_hits_the_file_size_limit_is_one_line(tmp_path, small_transactions):
    raw = tmp_path / "raw.parquet"
    small_transactions.to_parquet(raw)
    out = tmp_path / "out"
    params = tmp_path / "params.yaml"
    params.write_text(
        features_yaml(customer_windows_days=[1, 7], terminal_windows_days=[1]) + STORAGE_YAML
    )
    command = [sys.executable, "-m", "fraudlab.stages.featurize", str(raw), "--params"]
    command += [str(params), "--out", str(out / "features.parquet")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"featurize failed: .*File too large", done.stderr)
    assert "nothing was written: raise the file size limit (ulimit -f)" in done.stderr
    assert not out.exists() or not any(out.iterdir())  # not even a temporary
