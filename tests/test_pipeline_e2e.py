"""The real ``dvc repro`` on a temporary copy of the repository, with tiny params.

One module-scoped repository; the tests run in file order and each leaves it reproduced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fraudlab.core import schema
from fraudlab.core.io import dump_yaml, read_yaml
from fraudlab.core.params import load_params
from fraudlab.features.names import feature_names
from fraudlab.integrity.reproducibility import merge, stages_run
from fraudlab.monitoring.drift import ReferenceProfile
from helpers import Payload, Server, cells, command_or_skip
from test_params import ROOT, STAGES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

E2E_KEY = "e2e-key-0123456789abcdef"  # keys are 16 characters at least
TINY = yaml.safe_load((Path(__file__).parent / "tiny_params.yaml").read_text())


def _env(repo: Path) -> dict[str, str]:
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env[key] = "fraudlab-test"
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env[key] = "test@example.invalid"
    env.pop("DVC_EXP_NAME", None)
    return env


def _run(
    repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args, cwd=repo, env=_env(repo) | (env or {}), capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _stages_run(output: str) -> set[str]:
    return set(stages_run(output))


def _set_params(repo: Path, overrides: dict) -> None:
    """Edit params.yaml as DVC reads and writes it (YAML 1.2: a bare `yes` stays a word)."""
    path = repo / "params.yaml"
    path.write_text(dump_yaml(merge(read_yaml(path), overrides)))


def _dvc(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "dvc"), *args]


def _tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if f != "dvc.lock" and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("fraudlab")
    for name in _tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    _set_params(repo, TINY)
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "tiny fraudlab")
    first = _run(repo, *_dvc("repro"))
    assert _stages_run(first.stdout) == set(STAGES)
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "reproduced")
    return repo


@pytest.fixture(autouse=True)
def _restore(repo: Path):
    """Each test starts from the committed, reproduced state, whatever the previous one left."""
    yield
    _run(repo, "git", "checkout", "--", ".")
    _run(repo, "git", "clean", "-fdq")  # untracked, not ignored: e.g. a .dvc file a test added
    _run(repo, *_dvc("exp", "remove", "--all-commits", "-q"), check=False)
    _run(repo, *_dvc("checkout", "-q", "--force"))


def _lock(repo: Path) -> str:
    return (repo / "dvc.lock").read_text()


def _assert_clean(repo: Path) -> None:
    status = _run(repo, *_dvc("status", "-q"), check=False)
    assert status.returncode == 0, _run(repo, *_dvc("status"), check=False).stdout
    assert _run(repo, "git", "status", "--porcelain").stdout == ""


def test_first_repro_writes_metrics_and_is_clean(repo):
    metrics = yaml.safe_load((repo / "metrics/evaluate/metrics.json").read_text())
    assert 0.5 < metrics["test"]["auc_roc"] <= 1
    assert set(metrics["validation"]["average_precision"]) == {"mean", "std"}
    assert (repo / "metrics/evaluate/plots/images/roc.png").stat().st_size > 1000
    serving = json.loads((repo / "models/serving.json").read_text())
    assert serving["model_md5"] == _output_md5(repo, "train", "models/model.joblib")
    assert serving["threshold"] == metrics["test"]["at_threshold"]["threshold"]
    profile = json.loads((repo / "models/reference_profile.json").read_text())
    reference = ReferenceProfile.from_dict(profile)
    features = feature_names(load_params(repo / "params.yaml", "features")["features"])
    assert sorted(reference.features) == sorted(features)
    assert reference.score.count == len(pd.read_parquet(repo / "data/split/train.parquet"))
    summary = json.loads((repo / "metrics/monitoring.json").read_text())
    assert summary["alert"] is False  # the simulator's world does not change
    assert (summary["weeks"], summary["matured_weeks"], summary["worst_level"]) == (2, 1, "ok")
    assert len(summary) <= 12  # what `dvc metrics diff` shows of monitoring: a handful
    monitoring = json.loads((repo / "reports/monitoring.json").read_text())
    assert not monitoring["alert"]
    assert monitoring["drifted_features"] == []
    first, second = monitoring["weeks"]["week_1"], monitoring["weeks"]["week_2"]
    assert first["start"] == "2018-05-31"  # the day after the test period
    assert first["performance"]["status"] == "mature"  # its labels are 7 days old at the end
    assert 0 < first["performance"]["average_precision"] <= 1
    assert second["performance"] == {"status": "pending", "labels_mature_on": "2018-06-21"}
    assert set(first["drift"]) == {*features, "score"}
    assert monitoring["decayed_weeks"] == []
    assert first["diagnosis"]["kind"] == "stable"
    assert '<h2 id="verdict">Stable</h2>' in (repo / "reports/monitoring.html").read_text()
    series = json.loads((repo / "metrics/monitoring/plots/performance.json").read_text())
    assert [row["week"] for row in series] == [1]  # week 2 is pending: not drawn
    # the prequential test (split.test_folds 2): the test period, then the next one; its
    # first period is the test split, refit with the same seeds: the evaluate stage's figures
    prequential = json.loads((repo / "metrics/prequential_test.json").read_text())
    first, second = prequential["folds"]
    assert (first, second) == ("2018-05-24..2018-05-30", "2018-05-31..2018-06-06")
    assert prequential["folds"][first]["train"] == "2018-05-10..2018-05-16"
    for name in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert prequential["folds"][first][name] == metrics["test"][name]
        values = [prequential["folds"][period][name] for period in (first, second)]
        assert prequential[name]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    _assert_clean(repo)


def test_injected_amount_inflation_alerts_in_its_first_week_naming_what_moved(repo):
    # amounts doubled from the first monitored day (day 60 = 2018-05-31); strict: the stage
    # fails (x 1.5 reaches PSI ~0.3 on tiny data: too near the act level of 0.25 for a test)
    drift = {"scenario": "amount_inflation", "start_day": 60, "strength": 1.0}
    _set_params(repo, {"simulate": {"drift": drift}, "monitor": {"strict": True}})
    done = _run(repo, *_dvc("repro"), check=False)
    assert done.returncode != 0
    assert "monitor.strict is set" in done.stdout + done.stderr
    summary = json.loads((repo / "metrics/monitoring.json").read_text())
    assert (summary["alert"], summary["worst_level"], summary["decayed_weeks"]) == (True, "act", 1)
    monitoring = json.loads((repo / "reports/monitoring.json").read_text())
    assert monitoring["alert"]
    assert "tx_amount" in monitoring["drifted_features"]
    assert monitoring["weeks"]["week_1"]["drift"]["tx_amount"]["level"] == "act"
    # counts, calendar flags and terminal risks did not move
    for name in monitoring["drifted_features"]:
        assert "amount" in name or name == "score", name
    # the amount rule of the simulator's first scenario no longer tells frauds: AP falls, and
    # the report tells it apart from a drift the model absorbs
    assert monitoring["decayed_weeks"] == ["week_1"]
    first = monitoring["weeks"]["week_1"]
    assert first["diagnosis"]["kind"] == "data drift and model decay"
    assert first["performance"]["average_precision"] < monitoring["baseline"]["average_precision"]
    page = (repo / "reports/monitoring.html").read_text()
    assert '<h2 id="verdict">Data drift and model decay from week_1 (2018-05-31): ' in page
    assert "retrain" in page


def test_second_repro_runs_nothing(repo):
    assert _stages_run(_run(repo, *_dvc("repro")).stdout) == set()


def test_train_param_change_reruns_only_the_stages_that_fit_or_score(repo):
    _set_params(repo, {"train": {"xgboost": {"n_estimators": 11}}})
    assert _stages_run(_run(repo, *_dvc("repro")).stdout) == {
        "train",
        "prequential",
        "evaluate",
        "monitor",
    }


def test_feature_param_change_never_reruns_the_simulator(repo):
    _set_params(repo, {"features": {"customer_windows_days": [1, 7, 14]}})
    assert _stages_run(_run(repo, *_dvc("repro")).stdout) == {
        "featurize",
        "split",
        "train",
        "prequential",
        "evaluate",
        "monitor",
    }
    _run(repo, "git", "checkout", "params.yaml")
    restored = _run(repo, *_dvc("repro"))  # outputs come back from the run cache
    assert "evaluate" in restored.stdout
    _assert_clean(repo)


def test_a_foreign_layout_through_the_mapping_reaches_the_same_metrics(repo):
    """The simulator's data exported as upper-case CSV with text timestamps and label words,
    added with `dvc add` and mapped by params alone, trains and scores exactly the same."""
    committed = (repo / "metrics/evaluate/metrics.json").read_text()
    raw = pd.read_parquet(repo / "data/raw/transactions.parquet")
    foreign = raw.rename(columns=str.upper).assign(
        TX_DATETIME=raw["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        TX_FRAUD=raw["tx_fraud"].map({0: "legit", 1: "Fraud"}),
    )
    export = repo / "data" / "external" / "transactions.csv"
    export.parent.mkdir(parents=True)
    foreign.to_csv(export, index=False)
    _run(repo, *_dvc("add", "-q", "data/external/transactions.csv"))
    untracked = _run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout
    assert untracked.splitlines() == ["?? data/external/transactions.csv.dvc"]
    columns = {c: c.upper() for c in schema.REQUIRED_COLUMNS}
    _set_params(repo, {"source": {"path": "data/external/transactions.csv", "columns": columns}})
    ran = _stages_run(_run(repo, *_dvc("repro")).stdout)
    assert "simulate" not in ran
    assert "validate" in ran
    assert (repo / "metrics/evaluate/metrics.json").read_text() == committed


def test_an_experiment_keeps_a_yes_no_source_parsing_after_dvc_rewrites_params(repo):
    """`dvc exp run -S` writes params.yaml back in YAML 1.2 without the quotes of "yes" and
    "no": the experiment's validate must still read them as label words."""
    head = _run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    committed = (repo / "metrics/evaluate/metrics.json").read_text()
    raw = pd.read_parquet(repo / "data/raw/transactions.parquet")
    export = repo / "data" / "external" / "yes_no.csv"
    export.parent.mkdir(parents=True, exist_ok=True)
    raw.assign(tx_fraud=raw["tx_fraud"].map({0: "no", 1: "yes"})).to_csv(export, index=False)
    _run(repo, *_dvc("add", "-q", "data/external/yes_no.csv"))
    _set_params(repo, {"source": {"path": "data/external/yes_no.csv"}})
    try:
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "commit", "-qm", "a source labelled yes/no")
        _run(repo, *_dvc("exp", "run", "-S", "validate.example_values=6"))
        params = (repo / "params.yaml").read_text()
        assert "- yes\n" in params or " yes]" in params or " yes," in params  # DVC unquoted it
        quality = json.loads((repo / "metrics/data_quality.json").read_text())
        assert quality["rows_rejected"] == 0
        assert (repo / "metrics/evaluate/metrics.json").read_text() == committed
    finally:
        _run(repo, "git", "reset", "-q", "--hard", head)


def test_a_hostile_source_path_is_read_by_dvc_repro_and_runs_nothing(repo):
    """source.path is never pasted into a shell: a file name with a space, $(...), backticks,
    ; and quotes is read as a name, and none of its commands run."""
    committed = (repo / "metrics/evaluate/metrics.json").read_text()
    name = "tx $(touch PWNED1) `touch PWNED2`; touch PWNED3 'q\" x.parquet"
    (repo / "data" / "external").mkdir(parents=True, exist_ok=True)
    shutil.copytree(repo / "data/raw/transactions.parquet", repo / "data" / "external" / name)
    _set_params(repo, {"source": {"path": f"data/external/{name}"}})
    ran = _stages_run(_run(repo, *_dvc("repro")).stdout)
    assert "validate" in ran
    assert not list(repo.rglob("PWNED*"))
    assert (repo / "metrics/evaluate/metrics.json").read_text() == committed


def test_a_sqlite_database_through_dvc_import_db_reaches_the_same_metrics(repo):
    """The simulator's data in a SQLite table (timestamps as text), snapshotted with
    `dvc import-db`, trains and scores exactly the same."""
    committed = (repo / "metrics/evaluate/metrics.json").read_text()
    raw = pd.read_parquet(repo / "data/raw/transactions.parquet")
    table = raw.assign(tx_datetime=raw["tx_datetime"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    with contextlib.closing(sqlite3.connect(repo / "bank.db")) as connection:
        table.to_sql("transactions", connection, index=False)
    (repo / "data" / "external").mkdir(parents=True, exist_ok=True)
    _run(repo, *_dvc("config", "--local", "db.bank.url", "sqlite:///bank.db"))
    _run(
        repo,
        *_dvc(
            "import-db",
            "--conn",
            "bank",
            "--sql",
            "SELECT * FROM transactions",
            "-o",
            "data/external/bank.csv",
        ),
    )
    _set_params(repo, {"source": {"path": "data/external/bank.csv"}})
    ran = _stages_run(_run(repo, *_dvc("repro")).stdout)
    assert "simulate" not in ran
    assert "validate" in ran
    assert (repo / "metrics/evaluate/metrics.json").read_text() == committed


def _cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _output_md5(repo: Path, stage: str, path: str) -> str:
    outs = yaml.safe_load(_lock(repo))["stages"][stage]["outs"]
    return next(out["md5"] for out in outs if out["path"] == path)


@contextlib.contextmanager
def _tampered(path: Path, data: bytes):
    """Replace a read-only cache file's bytes, keeping its mode and mtime; restore it after."""
    original, stat = path.read_bytes(), path.stat()
    try:
        path.chmod(0o644)
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        path.chmod(stat.st_mode)
        yield
    finally:
        path.chmod(0o644)
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        path.chmod(stat.st_mode)


def test_a_model_swapped_in_the_dvc_cache_is_refused_and_never_runs(repo, tmp_path):
    """DVC restores a tampered cache object without noticing; evaluate hashes the model against
    dvc.lock before unpickling, so the next repro that reaches it fails and nothing runs."""
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(Payload(marker))
    cached = _cache_object(repo, _output_md5(repo, "train", "models/model.joblib"))
    model = repo / "models" / "model.joblib"
    with _tampered(cached, payload):
        model.unlink()
        _run(repo, *_dvc("checkout", "-q"))
        assert model.read_bytes() == payload  # DVC trusted its cache
        _set_params(repo, {"evaluate": {"score_bins": 10}})
        done = _run(repo, *_dvc("repro"), check=False)
        assert done.returncode != 0
        assert "models/model.joblib: MD5" in done.stdout + done.stderr
        assert "refusing to unpickle" in done.stdout + done.stderr
        assert not marker.exists()
        model.unlink()


def test_the_readme_serve_steps_serve_the_reproduced_model_and_refuse_stale_outputs(repo):
    """`fraudlab serve` right after `dvc repro` serves the model dvc.lock records; once params
    change, `dvc status` makes it refuse to start (the console script, as README runs it)."""
    env = {"FRAUDLAB_API_KEYS": E2E_KEY}
    model_md5 = _output_md5(repo, "train", "models/model.joblib")
    # a replay of the simulated data up to a time, and a transaction at that time
    args = ["--clock", "data", "--history", "data/clean/transactions.parquet",
            "--history-until", "2018-06-01T10:00:00", "--store", "serving.db"]  # fmt: skip
    with Server(args, env=env, cwd=repo) as running:
        tx = {
            "transaction_id": 10**15,
            "tx_datetime": "2018-06-01T10:00:00",
            "customer_id": 1,
            "terminal_id": 1,
            "tx_amount": 42.0,
        }
        status, answer = running.request("POST", "/v1/score", tx, key=E2E_KEY)
    assert status == 200, answer
    assert answer["model_version"] == model_md5
    _set_params(repo, {"train": {"xgboost": {"n_estimators": 11}}})
    script = Path(sys.executable).parent / "fraudlab"
    done = subprocess.run(
        [str(script), "serve", "--port", "0", "--store", "serving.db"],
        cwd=repo,
        env={**_env(repo), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    assert "`dvc status` reports changes in stage(s) train" in done.stderr
    assert "run `dvc repro`" in done.stderr


def test_verify_finds_a_flipped_bit_dvc_restores_and_calls_up_to_date(repo):
    raw = "data/split/train.parquet"
    cached = _cache_object(repo, _output_md5(repo, "split", raw))
    flipped = bytearray(cached.read_bytes())
    flipped[len(flipped) // 2] ^= 0x04
    command = [sys.executable, "-m", "fraudlab", "verify"]
    env = _env(repo) | {"PYTHONPATH": str(repo / "src")}
    with _tampered(cached, bytes(flipped)):
        (repo / raw).unlink()
        _run(repo, *_dvc("checkout", "-q"))
        assert (repo / raw).read_bytes() == bytes(flipped)  # DVC restored the damage
        assert _run(repo, *_dvc("status", "-q"), check=False).returncode == 0  # and trusts it
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        (repo / raw).unlink()
    assert done.returncode == 1, done.stderr
    assert f"for {raw} (stage split)" in done.stderr
    assert "cache " in done.stderr
    assert "workspace " in done.stderr
    _run(repo, *_dvc("checkout", "-q"))
    assert subprocess.run(command, cwd=repo, env=env, capture_output=True).returncode == 0


def test_a_forced_repro_on_the_dask_engine_leaves_the_lock_unchanged(repo):
    """Every stage rerun gives the bytes the fixture's first run committed, here with the data
    stages on a local Dask cluster of two worker processes (the concurrency test and .ci/run's
    reproducibility check rerun on the local engine, on a fresh clone for the latter). The
    engine is no param: switching to it on a clean workspace runs nothing."""
    committed = _lock(repo)
    dask = {"FRAUDLAB_ENGINE": "dask", "FRAUDLAB_DASK_WORKERS": "2"}
    assert _stages_run(_run(repo, *_dvc("repro"), env=dask).stdout) == set()
    forced = _run(repo, *_dvc("repro", "--force"), env=dask)
    assert _stages_run(forced.stdout) == set(STAGES)
    assert "on the dask engine" in forced.stdout + forced.stderr
    assert _lock(repo) == committed
    _assert_clean(repo)


def test_a_local_folder_remote_carries_the_data_and_models_to_a_fresh_clone(repo, tmp_path):
    """README "Scaling out": results pushed to a DVC remote (a shared folder here) come back
    byte for byte on another machine's clone, with nothing to reproduce."""
    remote = tmp_path / "remote"
    _run(repo, *_dvc("remote", "add", "--local", "shared", str(remote)))
    try:
        _run(repo, *_dvc("push", "-q", "-r", "shared"))
    finally:
        _run(repo, *_dvc("remote", "remove", "--local", "shared"))
    clone = tmp_path / "clone"
    _run(repo, "git", "clone", "-q", str(repo), str(clone))
    _run(clone, *_dvc("remote", "add", "--local", "shared", str(remote)))
    _run(clone, *_dvc("pull", "-q", "-r", "shared"))
    _assert_clean(clone)
    for output in ("data/features/transactions.parquet", "models/model.joblib"):
        theirs, ours = repo / output, clone / output
        files = sorted(p.relative_to(theirs) for p in theirs.rglob("*")) if theirs.is_dir() else []
        assert [(ours / f).read_bytes() for f in files] == [
            (theirs / f).read_bytes() for f in files
        ]
        assert theirs.is_dir() or ours.read_bytes() == theirs.read_bytes()


def test_experiment_run_and_comparison_commands(repo):
    _run(repo, *_dvc("exp", "run", "-S", "train.xgboost.learning_rate=0.1"))
    names = _run(repo, *_dvc("exp", "list", "--name-only")).stdout.split()
    assert len(names) == 1
    assert names[0] in _run(repo, *_dvc("exp", "show", "--json")).stdout
    params = json.loads(_run(repo, *_dvc("params", "diff", "HEAD", "--json")).stdout)
    (name, change), *others = params["params.yaml"].items()
    assert (name, change["old"], change["new"], others) == (
        "train.xgboost.learning_rate",
        0.3,
        0.1,
        [],
    )
    metrics = json.loads(_run(repo, *_dvc("metrics", "diff", "HEAD", "--json")).stdout)
    assert "test.average_precision" in metrics["metrics/evaluate/metrics.json"]


def test_a_concurrent_repro_fails_at_once_and_corrupts_nothing(repo):
    committed = _lock(repo)
    first = _forced_repro_started(repo)
    second = _run(repo, *_dvc("repro"), check=False)
    first.communicate(timeout=600)
    assert second.returncode != 0
    assert "is busy" in second.stdout + second.stderr
    assert first.returncode == 0
    assert _lock(repo) == committed
    _assert_clean(repo)


@pytest.fixture
def browser() -> str:
    return command_or_skip(
        ("chromium", "chromium-browser"), required_by="FRAUDLAB_REQUIRE_BROWSER",
        hint=".ci/run installs it",
    )  # fmt: skip


def _rendered_vega_plots(browser: str, page: Path, profile: Path) -> int:
    """Open ``page`` in headless Chromium with every network request refused; count the Vega
    plots that actually drew (vega-embed gives each drawn canvas or svg the class 'marks')."""
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    return dom.count('class="marks"')


def test_plots_render_in_a_browser_without_network(repo, browser, tmp_path):
    n_vega_plots = sum(
        1
        for plot in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
        if not (isinstance(plot, str) and plot.endswith("images"))
    )
    _run(repo, *_dvc("plots", "show", "-o", str(tmp_path / "offline")))
    page = tmp_path / "offline" / "index.html"
    assert _rendered_vega_plots(browser, page, tmp_path / "p1") == n_vega_plots
    assert len(list((tmp_path / "offline" / "static").glob("*.png"))) == 5

    # Control: DVC's default page, which loads Vega from a CDN, draws nothing here.
    from dvc_render.html import PAGE_HTML

    cdn_template = tmp_path / "cdn.html"
    cdn_template.write_text(PAGE_HTML)
    _run(
        repo,
        *_dvc("plots", "show", "-o", str(tmp_path / "cdn"), "--html-template", str(cdn_template)),
    )
    assert _rendered_vega_plots(browser, tmp_path / "cdn" / "index.html", tmp_path / "p2") == 0


def _forced_repro(repo: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(_dvc("repro", "--force"), cwd=repo, env=_env(repo), **popen)


def _forced_repro_started(repo: Path) -> subprocess.Popen:
    """Start `dvc repro --force` and return once it prints its first "Running stage"."""
    process = _forced_repro(repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if line.startswith("Running stage '") or time.monotonic() > deadline:
            break
    return process


def _stage_process_started(repo: Path, stage: str, timeout: float = 120) -> None:
    """Wait until a process of ``stage``'s command runs in ``repo``. DVC's "Running stage" line
    can reach a pipe late (it is buffered), so the process table is what proves it started."""
    module = f"fraudlab.stages.{stage}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                if module in cmdline and os.readlink(proc / "cwd") == str(repo):
                    return
        time.sleep(0.05)
    pytest.fail(f"stage {stage} never started")


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec: the repro under test must get Ctrl-C's default behaviour whatever ran pytest.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_during(repo: Path, stage: str, sig: signal.Signals) -> None:
    """Signal the process group of a forced repro while ``stage``'s command runs."""
    process = _forced_repro(
        repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_default_sigint,  # safe: this test process runs no threads
    )
    _stage_process_started(repo, stage)
    time.sleep(1.0)  # inside the stage's command
    assert process.poll() is None, "the repro finished before it could be interrupted"
    os.killpg(process.pid, sig)
    process.wait(timeout=60)
    assert process.returncode != 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_stage_leaves_nothing_complete_and_next_repro_matches(repo, sig):
    committed = _lock(repo)
    model_hash = yaml.safe_load(committed)["stages"]["train"]["outs"][0]["md5"]
    _interrupt_during(repo, "train", sig)
    model = repo / "models" / "model.joblib"
    if model.exists():  # only ever the complete artifact
        assert hashlib.md5(model.read_bytes()).hexdigest() == model_hash
    _run(repo, *_dvc("repro"))
    assert _lock(repo) == committed
    assert not list(repo.rglob(".*.tmp-*"))
    _assert_clean(repo)


def test_grid_search_ranks_flags_failures_and_the_winner_applies(repo):
    """The documented search on a tiny grid with one invalid value: the leaderboard ranks by
    validation AP, flags the failed run and exits 1; the winner applies and commits clean."""
    (repo / "tiny-search.yaml").write_text(
        "grids: {xgboost: {max_depth: [2, 4, -1]}}\nrandom: {}\n"
    )
    env = _env(repo) | {"PYTHONPATH": str(repo / "src")}
    command = [sys.executable, "-m", "fraudlab", "search", "--space", "tiny-search.yaml"]
    command += ["--engine", "queue", "--poll", "2", "--markdown", "board.md", "grid", "xgboost"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 experiment(s) failed" in done.stderr
    assert "max_depth" in done.stderr.split("1 experiment(s) failed", 1)[1]  # the reason
    rows = [cells(line) for line in (repo / "board.md").read_text().splitlines()[2:] if line]
    assert len(rows) == 4  # two experiments, the committed model among them, the failure
    assert rows[3][0] == "-"
    assert rows[3][3:5] == ["max_depth=-1", "**FAILED** (`dvc queue logs " + rows[3][1] + "`)"]
    assert sum(row[1].endswith("(committed)") for row in rows) == 1
    ranked = [float(row[4].split("±")[0]) for row in rows[:3]]
    assert ranked == sorted(ranked, reverse=True)
    experiments = [row for row in rows[:3] if not row[1].endswith("(committed)")]
    winner = experiments[0][1]
    depth = int(experiments[0][3].removeprefix("max_depth="))
    if not rows[0][1].endswith("(committed)"):
        assert f"dvc exp apply {winner} && dvc repro" in done.stdout
    # progress while the queue ran (the first poll comes before any experiment can finish)
    assert re.search(r"\d of 3 experiments finished \(\d failed\), \d running", done.stderr)

    _run(repo, *_dvc("exp", "apply", winner))
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["xgboost"]["max_depth"] == (
        depth
    )
    # The winner's outputs come back from the cache; the stages the search skips run now.
    assert _stages_run(_run(repo, *_dvc("repro")).stdout) == {"prequential", "monitor"}
    assert _run(repo, *_dvc("status", "-q"), check=False).returncode == 0
    (repo / "tiny-search.yaml").unlink()
    (repo / "board.md").unlink()
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", f"Select {winner}")
    diff = json.loads(_run(repo, *_dvc("metrics", "diff", "HEAD~1", "--json")).stdout)
    assert "validation.average_precision.mean" in diff["metrics/evaluate/metrics.json"]
    _run(repo, "git", "reset", "-q", "--hard", "HEAD~1")
    _run(repo, *_dvc("checkout", "-q"))


def test_warm_search_ranks_in_workers_and_its_best_is_a_dvc_experiment_with_equal_figures(repo):
    """The default engine on a tiny grid with one invalid value: every configuration ranked by
    warm workers, the failure flagged with its reason, the best run as a DVC experiment whose
    validation figures equal the warm ones (the search checks this, and so does this test), and
    that experiment applies."""
    (repo / "tiny-search.yaml").write_text(
        "grids: {xgboost: {max_depth: [2, 4, -1], n_estimators: [5]}}\nrandom: {}\n"
    )
    env = _env(repo) | {"PYTHONPATH": str(repo / "src")}
    command = [sys.executable, "-m", "fraudlab", "search", "--space", "tiny-search.yaml"]
    command += ["--jobs", "2", "--threads", "1", "--poll", "2", "--markdown", "board.md"]
    done = subprocess.run(
        [*command, "grid", "xgboost"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 experiment(s) failed:\n  xgboost-03: " in done.stderr
    assert "max_depth" in done.stderr.split("xgboost-03: ", 1)[1].splitlines()[0]
    assert re.search(r"\d of 3 experiments finished \(1 failed\), \d running", done.stderr)
    assert "3 configurations validated in" in done.stderr
    rows = [cells(line) for line in (repo / "board.md").read_text().splitlines()[2:] if line]
    assert len(rows) == 4  # two configurations, the committed model, the failure
    assert rows[3][:2] == ["-", "xgboost-03"]
    assert rows[3][4].startswith("**FAILED**: ")
    configured = [row for row in rows[:3] if not row[1].endswith("(committed)")]
    best, other = configured
    # the best is now a DVC experiment, with test figures; the other stays a warm row
    assert other[1] == "xgboost-01" or other[1] == "xgboost-02"
    assert other[7] == ""
    assert best[7] != ""
    shown = json.loads(_run(repo, *_dvc("exp", "show", "--json")).stdout)
    names = {e["name"] for b in shown for e in b.get("experiments") or []}
    assert best[1] in names, (best, names)
    depth = int(best[3].split("max_depth=")[1].split()[0])

    # the warm figure is the DVC experiment's own, to every digit
    _run(repo, *_dvc("exp", "apply", best[1]))
    metrics = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert f"{metrics['validation']['average_precision']['mean']:.3f}" == best[4].split(" ±")[0]
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["xgboost"]["max_depth"] == (
        depth
    )
    _run(repo, *_dvc("exp", "remove", "-A"))
    _run(repo, "git", "checkout", "-q", "--", "params.yaml", "dvc.lock", "metrics")
    _run(repo, *_dvc("checkout", "-q"))
    (repo / "tiny-search.yaml").unlink()
    (repo / "board.md").unlink()
    _assert_clean(repo)


def test_a_failing_validate_through_dvc_repro_keeps_the_last_good_outputs(repo):
    """A bad source makes `dvc repro` fail at validate: the clean data, the rejected rows and the
    data-quality metrics stay as the last good run left them (DVC does not delete them first),
    the message says so, and once the source is back nothing needs reproducing."""
    committed = _lock(repo)
    quality = (repo / "metrics/data_quality.json").read_text()
    (repo / "bad.csv").write_text(
        "transaction_id,tx_datetime,customer_id,terminal_id,tx_amount,tx_fraud\n"
        + "".join(f"{i},soon,1,1,1.0,0\n" for i in range(1, 11))
    )
    _set_params(repo, {"source": {"path": "bad.csv"}})

    failed = _run(repo, *_dvc("repro"), check=False)

    assert failed.returncode != 0
    assert "10 of 10 rows (100.00%) break the data contract" in failed.stderr
    assert (
        "Nothing was changed: data/clean/transactions.parquet, data/clean/rejected.parquet, "
        "metrics/data_quality.json still hold the last successful run's outputs"
    ) in failed.stderr
    assert _lock(repo) == committed
    assert (repo / "metrics/data_quality.json").read_text() == quality
    changed = json.loads(_run(repo, *_dvc("status", "--json", "validate")).stdout)["validate"]
    assert not [entry for entry in changed if "changed outs" in entry], changed
    assert _run(repo, "git", "status", "--porcelain").stdout.splitlines() == [
        " M params.yaml",
        "?? bad.csv",
    ]
    _run(repo, "git", "checkout", "--", "params.yaml")
    (repo / "bad.csv").unlink()
    _assert_clean(repo)  # the outputs are the committed ones: nothing to reproduce


def test_retraining_after_drift_beats_the_old_model_on_the_drifted_weeks(repo):
    """README "Retraining", once: the world drifts after deployment (amounts doubled from day 60
    of 88), the monitor stage reports decay; a challenger trained on the drifted days, compared
    with the committed model on the weeks neither has seen, ranks them better; it is applied,
    committed and served."""
    start = _run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    drift = {"scenario": "amount_inflation", "start_day": 60, "strength": 1.0}
    try:
        _set_params(repo, {"simulate": {"n_days": 88, "drift": drift}})
        _run(repo, *_dvc("repro"))
        monitoring = json.loads((repo / "reports/monitoring.json").read_text())
        assert monitoring["decayed_weeks"][:1] == ["week_1"]  # the model deployed at day 60
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "commit", "-qm", "the world drifted")
        deployed = _output_md5(repo, "train", "models/model.joblib")

        # train on the newest labelled week: 2018-05-31 is day 60, the first drifted day
        _run(repo, *_dvc("exp", "run", "-n", "challenger", "-S", "split.train_start=2018-05-31"))
        env = _env(repo) | {"PYTHONPATH": str(repo / "src")}
        command = [sys.executable, "-m", "fraudlab", "compare", "--baseline", "HEAD"]
        done = subprocess.run(
            [*command, "--json", "challenge.json", "--out", "challenge.md"],
            cwd=repo, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads((repo / "challenge.json").read_text())
        assert report["weeks"]["week_1"]["start"] == "2018-06-14"  # the challenger's test week
        matured = report["matured"]
        assert matured["challenger"]["average_precision"] > (
            matured["current"]["average_precision"] + 0.1
        )
        assert "the challenger ranks better" in (repo / "challenge.md").read_text()
        assert report["models"]["current"] == deployed
        assert report["models"]["challenger"] == _output_md5(repo, "train", "models/model.joblib")

        # the pull request's diff, then apply and commit: clean, and the service serves it
        diff = json.loads(_run(repo, *_dvc("metrics", "diff", "HEAD", "--json")).stdout)
        assert "test.average_precision" in diff["metrics/evaluate/metrics.json"]
        (repo / "challenge.json").unlink()
        (repo / "challenge.md").unlink()
        _run(repo, *_dvc("exp", "apply", "challenger"))
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "commit", "-qm", "Retrain on the drifted weeks")
        _assert_clean(repo)
        args = ["--clock", "data", "--history", "data/clean/transactions.parquet",
                "--store", "serving.db"]  # fmt: skip
        with Server(args, env={"FRAUDLAB_API_KEYS": E2E_KEY}, cwd=repo) as running:
            status, health = running.request("GET", "/readyz")
        assert status == 200, health
        assert any(report["models"]["challenger"] in line for line in running.log)
    finally:
        _run(repo, "git", "reset", "-q", "--hard", start)
        _run(repo, *_dvc("checkout", "-q", "--force"))


def test_the_pull_request_script_reports_on_a_fresh_clone_with_no_experiments(repo, tmp_path):
    """As a reviewer sees it: a branch changes train.xgboost.max_depth, reruns and commits; the
    workflow's script, on a fresh clone (no experiments, no DVC cache), reproduces the commit,
    writes the report against the base and the offline plots diff."""
    base = _run(repo, "git", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    _run(repo, "git", "checkout", "-q", "-b", "deeper-trees")
    try:
        _set_params(repo, {"train": {"xgboost": {"max_depth": 5}}})
        _run(repo, *_dvc("repro"))
        _run(repo, "git", "commit", "-qam", "Deeper trees")
        clone = tmp_path / "clone"
        _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
        assert not (clone / ".dvc" / "cache").exists()
        done = subprocess.run(
            ["bash", ".github/scripts/pull-request-report.sh", f"origin/{base}", "report"],
            cwd=clone,
            env=_env(clone) | {"PYTHONPATH": str(clone / "src")},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        _run(repo, "git", "checkout", "-q", "-f", base)
        _run(repo, "git", "branch", "-q", "-D", "deeper-trees")
        _run(repo, *_dvc("checkout", "-q", "--force"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reproduced: dvc.lock and metrics identical" in done.stderr
    report = (clone / "report" / "README.md").read_text()
    assert "## Committed model: xgboost" in report
    assert "At the operating threshold" in report
    assert "No experiments were found on this commit" in report
    assert f"## Changes against origin/{base}" in report
    changes = report.split("## Changes against", 1)[1]
    assert re.search(r"\| train\.xgboost\.max_depth\s*\|\s*3\s*\|\s*5\s*\|", changes), report
    assert re.search(r"\| test\.average_precision\s*\|", changes), report
    assert (clone / "report" / "plots_diff" / "index.html").stat().st_size > 1000


def test_reproducibility_check_fails_when_committed_metrics_were_not_produced(repo):
    """`fraudlab check-reproducible` on a commit whose metrics file was edited by hand: the fresh
    clone's run restores the real value, so the check fails and names the file."""
    path = repo / "metrics/evaluate/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["test"]["average_precision"] += 0.01
    path.write_text(json.dumps(metrics, indent=4))
    _run(repo, "git", "commit", "-qam", "metrics edited by hand")
    command = [sys.executable, "-m", "fraudlab", "check-reproducible", "--repo", str(repo)]
    env = _env(repo) | {"PYTHONPATH": str(repo / "src")}
    try:
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    finally:
        _run(repo, "git", "reset", "-q", "--hard", "HEAD~1")
    assert done.returncode == 1, done.stderr
    assert "a fresh clone did not reproduce the committed results" in done.stderr
    assert "metrics/evaluate/metrics.json" in done.stderr
    assert "test.average_precision" in done.stderr
