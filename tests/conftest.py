"""Shared fixtures: small params and small simulated data, built in memory."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import redis

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams, SimulateParams, SourceParams, ValidateParams
from fraudlab.data.simulate import simulate_transactions
from fraudlab.features.names import GROUPS
from fraudlab.serving.redis_server import RedisServer, redis_server_binary
from helpers import features_with, unavailable


def small_simulate_params(**overrides) -> SimulateParams:
    values = {
        "seed": 7,
        "n_customers": 150,
        "n_terminals": 300,
        "n_days": 50,
        "start_date": dt.date(2018, 4, 1),
        "radius": 10.0,
        "high_amount_threshold": 220.0,
        "compromised_terminals_per_day": 1,
        "compromised_terminal_days": 28,
        "compromised_customers_per_day": 1,
        "compromised_customer_days": 14,
        "customers_per_block": None,
        "drift": {"scenario": "none", "start_day": 30, "strength": 0.5},
    }
    return SimulateParams(**(values | overrides))


@pytest.fixture(scope="session")
def small_transactions() -> pd.DataFrame:
    return simulate_transactions(small_simulate_params())


@pytest.fixture
def features_params() -> FeaturesParams:
    # every group, whichever the committed params select: each kernel is exercised
    return features_with(
        groups=list(GROUPS),
        customer_windows_days=[1, 7, 30],
        terminal_windows_days=[1, 7, 30],
        label_delay_days=7,
        night_end_hour=6,
    )


def source_params(**overrides) -> SourceParams:
    """The committed params' source section (canonical layout), with overrides."""
    values = {
        "path": "unused.parquet",
        "columns": {},
        "timestamp_unit": None,
        "timezone": "UTC",
        "fraud_values": [1, "true", "fraud", "yes"],
        "legit_values": [0, "false", "legit", "no"],
        "text_ids": [],
        "extra_columns": "all",
    }
    return SourceParams(**(values | overrides))


CANONICAL = source_params()


def contract_params(**overrides) -> ValidateParams:
    """The committed params' validate section, with overrides."""
    values = {
        "max_rejected_share": 0.01,
        "example_values": 5,
        "earliest_date": dt.date(2000, 1, 1),
        "latest_date": dt.date(2099, 12, 31),
    }
    return ValidateParams(**(values | overrides))


@pytest.fixture
def validate_params() -> ValidateParams:
    return contract_params(max_rejected_share=0.2, example_values=3)


def transactions(rows: list[tuple]) -> pd.DataFrame:
    """Hand-made canonical frame from rows of
    (id, 'YYYY-MM-DD HH:MM', customer, terminal, amount, fraud)."""
    frame = pd.DataFrame(rows, columns=list(schema.REQUIRED_COLUMNS))
    return frame.assign(tx_datetime=pd.to_datetime(frame["tx_datetime"]).astype("datetime64[ns]"))


# the storage section of a params.yaml written by a test: one part for small data
STORAGE_YAML = "storage: {rows_per_part: 1000000}\n"
VALIDATE_OUTPUTS = ("clean.parquet", "rejected.parquet", "dq.json")


def run_validate_stage(
    raw: Path, *, source: SourceParams, max_rejected_share: float, out_dir: Path
) -> subprocess.CompletedProcess:
    """Run the real validate stage as a process on ``raw`` (set as source.path), outputs named
    VALIDATE_OUTPUTS in out_dir."""
    source = source.model_copy(update={"path": str(raw)})
    params = out_dir / "params.yaml"
    contract = contract_params(max_rejected_share=max_rejected_share)
    params.write_text(
        f"validate: {contract.model_dump_json()}\nsource: {source.model_dump_json()}\n"
        + STORAGE_YAML
    )
    clean, rejected, report = (str(out_dir / name) for name in VALIDATE_OUTPUTS)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fraudlab.stages.validate",
            "--params",
            str(params),
            "--clean",
            clean,
            "--rejected",
            rejected,
            "--report",
            report,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server for the session (free loopback port, its own directory, AOF
    with appendfsync always); skipped where Debian's redis-server is missing, unless
    FRAUDLAB_REQUIRE_REDIS is set (CI), where that fails."""
    if redis_server_binary() is None:
        unavailable("no redis-server on PATH", required_by="FRAUDLAB_REQUIRE_REDIS",
                    hint="Debian: apt-get install redis-server")  # fmt: skip
    with RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="always") as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(params=["sqlite", "redis"])
def store_location(request, tmp_path):
    """Where a history store lives, for each backend: a SQLite file, or an empty Redis."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return str(tmp_path / "history.db")
