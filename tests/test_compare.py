"""The challenger comparison's pure parts, and the revision it is given never becomes an
option of git."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.experiments.compare import Contender, comparison, markdown, resolve_revision, verdict
from fraudlab.monitoring.weekly import Week
from helpers import cells
from test_params import ROOT


def _weeks_of_rows() -> tuple[pd.DataFrame, list[Week]]:
    n = 400
    minutes = np.arange(n) * (14 * 24 * 60 / n)
    rows = pd.DataFrame(
        {
            schema.TX_DATETIME: pd.Timestamp("2018-06-01") + pd.to_timedelta(minutes, "min"),
            schema.CUSTOMER_ID: np.arange(n) % 37,
            schema.TX_FRAUD: (np.arange(n) % 10 == 0).astype(int),
        }
    )
    day = pd.Timedelta(days=1)
    first = pd.Timestamp("2018-06-01")
    return rows, [Week(i + 1, first + 7 * i * day, first + 7 * (i + 1) * day) for i in range(2)]


def test_both_models_are_measured_on_the_same_matured_weeks_and_pooled():
    rows, weeks = _weeks_of_rows()
    perfect = rows[schema.TX_FRAUD].to_numpy() + np.linspace(0, 0.5, len(rows))
    noisy = np.random.default_rng(0).uniform(size=len(rows))
    report = comparison(
        rows,
        [Contender("current", "a" * 32, noisy), Contender("challenger", "b" * 32, perfect)],
        weeks=weeks,
        end=pd.Timestamp("2018-06-15") + pd.Timedelta(days=7),  # week 2 matures on its last day
        delay_days=7,
        k=5,
    )
    first, second = report["weeks"]["week_1"], report["weeks"]["week_2"]
    assert first["challenger"]["average_precision"] == 1.0
    assert first["current"]["average_precision"] < 0.5
    assert second["challenger"]["status"] == "mature"
    assert report["matured"]["challenger"]["average_precision"] == 1.0
    assert verdict(report).startswith("Over the matured weeks the challenger ranks better")
    rows = [cells(line) for line in markdown(report).splitlines() if line.startswith("|")]
    assert rows[2][:3] == ["week_1", "2018-06-01", "200"]
    assert rows[-1][0] == "**all matured**"


def test_pending_weeks_are_listed_never_pooled():
    rows, weeks = _weeks_of_rows()
    scores = np.linspace(0, 1, len(rows))
    report = comparison(
        rows,
        [Contender("current", "a" * 32, scores), Contender("challenger", "b" * 32, scores)],
        weeks=weeks,
        end=pd.Timestamp("2018-06-10"),  # neither week's labels have matured
        delay_days=7,
        k=5,
    )
    assert report["matured"] == {}
    assert report["weeks"]["week_2"]["current"]["status"] == "pending"
    assert verdict(report).startswith("No matured week")
    rows = [cells(line) for line in markdown(report).splitlines() if line.startswith("|")]
    assert rows[2][:4] == ["week_1", "2018-06-01", "200", "2018-06-15"]


@pytest.mark.parametrize("revision", ["--output=/tmp/x", "-h", "no-such-branch", "HEAD:dvc.lock"])
def test_a_revision_that_is_not_a_commit_is_refused(revision, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="not a commit of the repository"):
        resolve_revision(revision)


def test_a_revision_resolves_to_its_commit(monkeypatch):
    monkeypatch.chdir(ROOT)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert resolve_revision("HEAD") == head
