"""The Dask engine: the same bytes as the local engine for every partitioned stage, on a real
``distributed.LocalCluster`` of worker processes on 127.0.0.1, with any number of partitions,
and with a worker killed in the middle of a task."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from xgboost import XGBClassifier

from conftest import small_simulate_params
from fraudlab.core import schema
from fraudlab.core.io import atomic_path, scratch_directory, write_dataset
from fraudlab.core.params import TrainParams
from fraudlab.data.simulate import (
    merge_blocks,
    n_blocks,
    simulate_block,
    simulate_dataset,
    simulate_transactions,
)
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.features.partitioned import DatasetError, check_layout, featurize_dataset
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.scaleout.engine import (
    DaskEngine,
    EngineError,
    LocalEngine,
    engine_config,
    local_cluster,
)

pytestmark = pytest.mark.slow  # a real Dask LocalCluster with worker processes

ROWS_PER_PART = 4000


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _featurized(engine, clean: Path, out: Path, params) -> dict[str, bytes]:
    with atomic_path(out, directory=True) as tmp, scratch_directory(out) as scratch:
        featurize_dataset(
            engine, clean, tmp, scratch=scratch, params=params, rows_per_part=ROWS_PER_PART
        )
    return _files(out)


def _simulated(engine, out: Path, params) -> dict[str, bytes]:
    with atomic_path(out, directory=True) as tmp, scratch_directory(out) as scratch:
        simulate_dataset(engine, tmp, scratch=scratch, params=params, rows_per_part=ROWS_PER_PART)
    return _files(out)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def clean(tmp_path_factory, small_transactions) -> Path:
    """Clean data in parts, with what makes windows hard: text ids, an extra text column,
    missing labels and runs of same-timestamp rows across part boundaries."""
    frame = small_transactions.copy()
    frame[schema.TX_DATETIME] = frame[schema.TX_DATETIME].dt.floor("h")  # many ties
    frame[schema.CUSTOMER_ID] = "card-" + frame[schema.CUSTOMER_ID].astype(str)
    frame["channel"] = np.where(frame[schema.TRANSACTION_ID] % 3 == 0, "web", None)
    labels = frame[schema.TX_FRAUD].astype("Int8")
    labels[frame[schema.TRANSACTION_ID] % 11 == 0] = pd.NA
    frame[schema.TX_FRAUD] = labels
    frame = frame.sort_values(schema.SORT_KEYS, kind="stable", ignore_index=True)
    path = tmp_path_factory.mktemp("clean") / "transactions.parquet"
    write_dataset(frame, path, rows_per_part=ROWS_PER_PART)
    return path


@pytest.fixture(scope="module")
def local_features(clean, tmp_path_factory, features_params_module) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "features.parquet"
    features = build_features(pd.read_parquet(clean), features_params_module)
    write_dataset(features, out, rows_per_part=ROWS_PER_PART)
    return _files(out)


@pytest.fixture(scope="module")
def features_params_module():
    from fraudlab.features.names import GROUPS
    from helpers import features_with

    # every group, whichever the committed params select: each kernel is exercised
    return features_with(
        groups=list(GROUPS),
        customer_windows_days=[1, 7, 30],
        terminal_windows_days=[1, 7, 30],
        label_delay_days=7,
        night_end_hour=6,
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ("local", None, 2, None)),
        ({"FRAUDLAB_ENGINE": "Dask", "FRAUDLAB_DASK_WORKERS": "4"}, ("dask", None, 4, None)),
        (
            {"FRAUDLAB_ENGINE": "dask", "DASK_SCHEDULER_ADDRESS": "tcp://10.0.0.5:8786"},
            ("dask", "tcp://10.0.0.5:8786", 2, None),
        ),
        ({"FRAUDLAB_PARTITIONS": "8"}, ("local", None, 2, 8)),
    ],
)
def test_the_engine_is_read_from_the_environment(environ, expected):
    config = engine_config(environ)
    assert (config.kind, config.address, config.workers, config.partitions) == expected


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FRAUDLAB_ENGINE": "spark"}, "FRAUDLAB_ENGINE='spark'"),
        ({"FRAUDLAB_DASK_WORKERS": "0"}, "FRAUDLAB_DASK_WORKERS='0'"),
        ({"FRAUDLAB_PARTITIONS": "2; rm -rf /"}, "FRAUDLAB_PARTITIONS"),
    ],
)
def test_a_bad_engine_variable_is_named(environ, named):
    with pytest.raises(EngineError, match=named.replace("'", ".")):
        engine_config(environ)


def test_the_partitioned_features_are_the_local_engines_bytes(
    clean, local_features, features_params_module, tmp_path
):
    assert len(local_features) > 2  # several parts
    for partitions in (1, 3, 7):
        out = tmp_path / f"p{partitions}.parquet"
        got = _featurized(LocalEngine(partitions), clean, out, features_params_module)
        assert got == local_features, partitions
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def test_dask_features_are_the_local_engines_bytes(
    client, clean, local_features, features_params_module, tmp_path
):
    for partitions in (1, 4):
        out = tmp_path / f"dask{partitions}.parquet"
        engine = DaskEngine(client, partitions)
        assert engine.workers == 2
        assert _featurized(engine, clean, out, features_params_module) == local_features


def _worker_killed_while(client, prefix: str, done: threading.Event) -> list[str]:
    """SIGKILL the worker process running the first task whose key starts with ``prefix``;
    the nanny starts a new one and the scheduler runs the task again."""
    pids = client.run(os.getpid)
    killed = []
    while not done.is_set() and not killed:
        for address, keys in client.processing().items():
            if any(str(key).startswith(prefix) for key in keys):
                os.kill(pids[address], signal.SIGKILL)
                killed.append(address)
                break
        time.sleep(0.002)
    return killed


def test_a_worker_killed_mid_task_still_gives_the_same_bytes(
    client, features_params_module, tmp_path
):
    # one partition over ~100 k rows: the windows task runs long enough to be caught
    frame = simulate_transactions(small_simulate_params(n_customers=1500, n_terminals=3000))
    clean = tmp_path / "clean.parquet"
    write_dataset(frame, clean, rows_per_part=40_000)
    expected_dir = tmp_path / "expected.parquet"
    write_dataset(build_features(frame, features_params_module), expected_dir, rows_per_part=40_000)

    done, killed = threading.Event(), []
    watcher = threading.Thread(
        target=lambda: killed.extend(_worker_killed_while(client, "windows", done))
    )
    watcher.start()
    out = tmp_path / "dask.parquet"
    try:
        with atomic_path(out, directory=True) as tmp, scratch_directory(out) as scratch:
            featurize_dataset(
                DaskEngine(client, 1),
                clean,
                tmp,
                scratch=scratch,
                params=features_params_module,
                rows_per_part=40_000,
            )
    finally:
        done.set()
        watcher.join()
    assert killed, "no windows task was caught running"
    assert _files(out) == _files(expected_dir)
    client.wait_for_workers(2, timeout=60)


def test_block_simulation_is_the_same_on_dask_and_locally(client, tmp_path):
    params = small_simulate_params(customers_per_block=40)  # 4 blocks
    local = _simulated(LocalEngine(), tmp_path / "local.parquet", params)
    assert len(local) > 2
    assert _simulated(DaskEngine(client), tmp_path / "dask.parquet", params) == local
    # the parts, cut from per-day counts, hold exactly the merge of all blocks in one piece
    whole = merge_blocks(
        [simulate_block(block, params) for block in range(n_blocks(params))],
        first_id=0,
        params=params,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local.parquet"), whole)
    assert whole[schema.TRANSACTION_ID].tolist() == list(range(len(whole)))
    assert whole[schema.TX_DATETIME].is_monotonic_increasing


def test_a_layout_that_is_not_in_parts_of_the_params_size_is_refused(small_transactions, tmp_path):
    path = tmp_path / "clean.parquet"
    write_dataset(small_transactions, path, rows_per_part=ROWS_PER_PART)
    with pytest.raises(DatasetError, match=r"part 0 has 4000 rows, not storage\.rows_per_part"):
        check_layout(path, rows_per_part=5000)
    shuffled = small_transactions.sample(frac=1, random_state=0)
    write_dataset(shuffled, path, rows_per_part=ROWS_PER_PART)
    with pytest.raises(DatasetError, match="before the previous part ends"):
        check_layout(path, rows_per_part=ROWS_PER_PART)


def _messy(frame: pd.DataFrame) -> pd.DataFrame:
    """A source with what crosses chunks: exact duplicates and repeated ids far apart, bad
    values of several kinds, text ids, and an amount column with a word in one chunk only."""
    frame = frame.head(3000).copy()
    frame[schema.CUSTOMER_ID] = "c" + frame[schema.CUSTOMER_ID].astype(str)
    frame[schema.TX_AMOUNT] = frame[schema.TX_AMOUNT].astype(object)
    frame.loc[2500, schema.TX_AMOUNT] = "twelve"
    frame.loc[100, schema.TX_AMOUNT] = -5.0
    frame.loc[1700, schema.TX_FRAUD] = 7
    frame.loc[[10, 1900], schema.TRANSACTION_ID] = [frame.loc[2900, schema.TRANSACTION_ID]] * 2
    copies = frame.loc[[5, 5, 1200]]  # exact duplicates of rows in other chunks
    return pd.concat([frame, copies], ignore_index=True)


def _validated(engine, path: Path, out: Path, rows_per_part: int):
    from conftest import contract_params, source_params
    from fraudlab.data.ingest import columns_to_read, read_header, text_columns
    from fraudlab.data.partitioned import validate_dataset

    source = source_params(path=str(path), text_ids=[schema.CUSTOMER_ID])
    with atomic_path(out, directory=True) as tmp, scratch_directory(out) as scratch:
        result = validate_dataset(
            engine,
            path,
            columns=columns_to_read(read_header(path), source),
            text=text_columns(source),
            clean_out=tmp,
            scratch=scratch,
            params=contract_params(max_rejected_share=0.1),
            source=source,
            rows_per_part=rows_per_part,
        )
    return _files(out), result.rejected, result.report


def test_validate_in_chunks_and_partitions_gives_the_same_bytes_on_any_engine(
    client, small_transactions, tmp_path
):
    csv = tmp_path / "messy.csv"
    _messy(small_transactions).to_csv(csv, index=False)
    files, rejected, report = _validated(LocalEngine(1), csv, tmp_path / "l1.parquet", 800)
    assert len(files) == 4  # 3,003 rows, 7 rejected, 2 dropped: parts of 800 rows
    assert report["exact_duplicates_dropped"] == 3
    assert report["rejected_by_reason"] == {
        "transaction_id repeated with different content": 3,
        "unparseable tx_amount": 1,
        "negative tx_amount": 1,
        "tx_fraud not 0/1": 1,
    }
    assert rejected["source_row"].is_monotonic_increasing
    for engine, name in ((LocalEngine(5), "l5"), (DaskEngine(client, 3), "d3")):
        got = _validated(engine, csv, tmp_path / f"{name}.parquet", 800)
        assert got[0] == files, name
        pd.testing.assert_frame_equal(got[1], rejected)
        assert got[2] == report


def test_validate_in_chunks_is_validate_on_the_whole_source(small_transactions, tmp_path):
    """A Parquet source (typed columns, row groups as chunks): the same clean rows, rejected
    rows and report as the contract applied to all rows at once."""
    from conftest import contract_params, source_params
    from fraudlab.data.validate import validate_transactions

    messy = _messy(small_transactions).astype({schema.TX_AMOUNT: "string"})
    source_file = tmp_path / "messy.parquet"
    messy.to_parquet(source_file, row_group_size=700)
    _, rejected, report = _validated(LocalEngine(4), source_file, tmp_path / "c.parquet", 800)
    whole = validate_transactions(
        pd.read_parquet(source_file),
        contract_params(max_rejected_share=0.1),
        source=source_params(text_ids=[schema.CUSTOMER_ID]),
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "c.parquet"), whole.clean)
    pd.testing.assert_frame_equal(rejected, whole.rejected)
    assert report == whole.report


def _hist_params(dask_workers: int):
    from test_models import _train_params

    raw = _train_params("xgboost").model_dump()
    raw["xgboost"] |= {"tree_method": "hist", "n_estimators": 15}
    return TrainParams.model_validate(raw | {"dask_workers": dask_workers})


@pytest.fixture(scope="module")
def train_rows(small_transactions):
    from test_models import FP

    return build_features(small_transactions, FP), feature_names(FP)


def _raw_model(pipeline) -> bytes:
    return bytes(pipeline.named_steps["model"].get_booster().save_raw("json"))


def test_boosting_on_one_dask_worker_is_boosting_in_process(client, train_rows):
    frame, names = train_rows
    here = fit_pipeline(frame, names, params=_hist_params(0))
    on_one = fit_pipeline(frame, names, params=_hist_params(1), client=client)
    assert isinstance(on_one.named_steps["model"], XGBClassifier)  # scored with no cluster
    assert _raw_model(on_one) == _raw_model(here)
    np.testing.assert_array_equal(
        predict_scores(on_one, frame, features=names), predict_scores(here, frame, features=names)
    )


def test_boosting_on_two_dask_workers_is_reproducible_and_close(client, train_rows):
    frame, names = train_rows
    params = _hist_params(2)
    first = fit_pipeline(frame, names, params=params, client=client)
    second = fit_pipeline(frame, names, params=params, client=client)
    assert _raw_model(first) == _raw_model(second)
    # two workers sketch their own bins: another model than one process's, close to it
    here = predict_scores(fit_pipeline(frame, names, params=_hist_params(0)), frame, features=names)
    there = predict_scores(first, frame, features=names)
    assert not np.array_equal(here, there)
    labels = frame[schema.TX_FRAUD]
    assert abs(roc_auc_score(labels, here) - roc_auc_score(labels, there)) < 0.02


def test_more_training_workers_than_the_cluster_has_is_named(client, train_rows):
    frame, names = train_rows
    with pytest.raises(EngineError, match=r"train\.dask_workers is 3 but the Dask cluster has 2"):
        fit_pipeline(frame, names, params=_hist_params(3), client=client)


@pytest.mark.parametrize(
    ("raw", "parsed", "left_out"),
    [
        (pd.Series([1, 2], dtype="int64"), pd.Series([1, 2], dtype="Int64"), True),
        (pd.Series([1.5, np.nan]), pd.Series([1.5, np.nan]), True),
        (pd.Series([-0.0, 1.0]), pd.Series([0.0, 1.0]), False),  # equal, not the same bits
        (pd.Series([1, 2], dtype="int64"), pd.Series([1, pd.NA], dtype="Int64"), False),
        (pd.Series(["1", "2"], dtype=object), pd.Series([1, 2], dtype="Int64"), False),
        (pd.Series([3, 2], dtype="int64"), pd.Series([1, 2], dtype="Int64"), False),
    ],
)
def test_a_piece_leaves_out_only_values_as_given_it_can_rebuild_bit_for_bit(raw, parsed, left_out):
    from fraudlab.data.partitioned import _recoverable

    assert _recoverable(raw, parsed) is left_out


def test_workers_start_without_dasks_malloc_setting(client):
    """``local_cluster`` reaches the workers: glibc's own thresholds, not Dask's fixed one."""
    found = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(found.values()) == {os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_tasks_run_under_their_own_names(client):
    import math

    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        assert DaskEngine(client).map(math.sqrt, [4, 9]) == [2.0, 3.0]
    assert {record["key"].split("-")[0] for record in stream.data} == {"sqrt"}


def test_workers_started_by_hand_with_the_repositorys_dask_config_run_as_the_engines(tmp_path):
    """README "Scaling out": `DASK_CONFIG=cluster dask worker ...` gives workers the settings
    of the clusters the engine starts (``WORKER_CONFIG``); a plain `dask worker` does not."""
    import socket
    import subprocess
    import sys

    import dask.config
    from distributed import Client

    from fraudlab.scaleout.engine import WORKER_CONFIG

    config_dir = str(Path(__file__).resolve().parents[1] / "cluster")
    collected = dask.config.collect(paths=[config_dir], env={})
    for dotted, value in WORKER_CONFIG.items():  # the file says what the engine sets
        found = collected
        for key in dotted.split("."):
            found = found[key]
        assert found == value, dotted

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    dask_cli = str(Path(sys.executable).parent / "dask")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    commands = [
        ([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]], env),
        ([dask_cli, "worker", address, "--nthreads", "1"], env | {"DASK_CONFIG": config_dir}),
        ([dask_cli, "worker", address, "--nthreads", "1"], env),
    ]
    started = []
    try:
        for argv, process_env in commands:
            started.append(
                subprocess.Popen(
                    [*argv, "--no-dashboard"],
                    cwd=tmp_path,
                    env=process_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            found = client.run(
                lambda: (os.environ.get("DASK_CONFIG"), os.environ.get("MALLOC_TRIM_THRESHOLD_"))
            )
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
    assert set(found.values()) == {(config_dir, None), (None, "65536")}
