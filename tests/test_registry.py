"""The model registry: versions and stages as Git tags, read by counter, each version's files
checked against its commit's dvc.lock and the MD5s its tag records.

The pure reading of tags is tested on lists of tags; registering, promoting, fetching and
serving a stage run end to end on a scratch Git and DVC repository (real tags, real `dvc repro`,
the files read back through dvc.api)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudlab.core.errors import UserError
from fraudlab.integrity.lock import file_md5
from fraudlab.registry.commands import fetch, load_registry, promote, register, show_rows
from fraudlab.registry.tags import (
    SERVED,
    RegistryError,
    Tag,
    Version,
    check_record,
    read_registry,
    record_message,
    recorded_md5s,
    resolve,
)
from fraudlab.serving.server import parser, use_registered_version
from helpers import SERVE, Server
from test_service import KEY, batch, features_params_module, write_served  # noqa: F401

MD5S = {path: f"{n:032x}" for n, path in enumerate(SERVED, start=1)}


def _tag(name: str, commit: str, message: str = "") -> Tag:
    return Tag(name, commit * 40 if len(commit) == 1 else commit, message, "2026-01-01T00:00:00")


# --- pure: reading the tags --------------------------------------------------------------------


def test_a_stage_holds_the_version_of_its_highest_numbered_assignment():
    registry = read_registry(
        [
            _tag("fraud-model@v1.0.0", "a", record_message(MD5S)),
            _tag("fraud-model@v1.1.0", "b", record_message(MD5S)),
            _tag("fraud-model#prod#10", "a"),  # a rollback, after #9 (not after #1 as text)
            _tag("fraud-model#prod#9", "b"),
            _tag("fraud-model#prod#1", "a"),
            _tag("fraud-model#staging#1", "b"),
            _tag("other-model@v3.0.0", "c", record_message(MD5S)),
            _tag("release-2026", "c"),
        ]
    )
    assert list(registry.versions) == ["v1.0.0", "v1.1.0"]
    assert registry.stages["prod"].version == "v1.0.0"
    assert registry.stages_of("v1.1.0") == ["staging"]
    assert resolve(registry, "prod") == (registry.versions["v1.0.0"], "prod")
    assert resolve(registry, "fraud-model#prod") == (registry.versions["v1.0.0"], "prod")
    # a deploy triggered by one assignment tag deploys what that tag assigned
    assert resolve(registry, "fraud-model#prod#9") == (registry.versions["v1.1.0"], "prod")
    assert resolve(registry, "fraud-model@v1.1.0") == (registry.versions["v1.1.0"], None)
    assert registry.versions["v1.0.0"].md5s == MD5S


def test_unassigned_stages_unregistered_commits_and_unknown_names_are_refused():
    registry = read_registry(
        [
            _tag("fraud-model@v1.0.0", "a", record_message(MD5S)),
            _tag("fraud-model@v1.1.0", "b", record_message(MD5S)),
            _tag("fraud-model@v1.1.0!", "b"),  # deregistered
            _tag("fraud-model#prod#1", "a"),
            _tag("fraud-model#prod!#2", "a"),  # unassigned
            _tag("fraud-model#staging#1", "c"),  # a commit without a version
        ]
    )
    assert list(registry.versions) == ["v1.0.0"]
    with pytest.raises(RegistryError, match="unassigned by fraud-model#prod!#2"):
        resolve(registry, "prod")
    with pytest.raises(RegistryError, match="no version of fraud-model is registered"):
        resolve(registry, "staging")
    with pytest.raises(RegistryError, match=r"no such version or stage.*v1.0.0, prod, staging"):
        resolve(registry, "v1.1.0")


def test_a_record_must_name_every_served_file_as_the_commits_dvc_lock_does():
    version = Version(
        "v1.0.0", "a" * 40, "fraud-model@v1.0.0", "", recorded_md5s(record_message(MD5S, "note"))
    )
    assert version.md5s == MD5S
    check_record(version, MD5S)
    moved = {**MD5S, SERVED[0]: "f" * 32}
    with pytest.raises(RegistryError, match="the tag was moved or rewritten"):
        check_record(version, moved)
    bare = Version("v1.0.0", "a" * 40, "fraud-model@v1.0.0", "", {})
    with pytest.raises(RegistryError, match="records no MD5"):
        check_record(bare, MD5S)


# --- end to end: a scratch Git and DVC repository ---------------------------------------------

MAKE = """import shutil, sys, yaml
source = yaml.safe_load(open("params.yaml"))["source"]
for name in ("model.joblib", "serving.json", "reference_profile.json"):
    shutil.copy(f"{source}/{name}", f"models/{name}")
"""


def _run(repo: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


def _dvc(repo: Path, *args: str) -> str:
    return _run(repo, sys.executable, "-m", "dvc", *args)


def _commit(repo: Path, message: str, auc: float) -> str:
    metrics = repo / "metrics" / "evaluate" / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps({"test": {"auc_roc": auc, "average_precision": 0.5,
                                            "card_precision_at_100": 0.25}}))  # fmt: skip
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", message)
    return _run(repo, "git", "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def template(tmp_path_factory, batch, features_params_module):  # noqa: F811
    """A repository whose ``train`` stage copies a model in: commit A serves model a, commit B
    (params changed, reproduced) model b; nothing registered yet."""
    root = tmp_path_factory.mktemp("registry")
    sources = {name: root / f"model-{name}" for name in ("a", "b")}
    for n_estimators, source in zip((10, 5), sources.values(), strict=True):
        write_served(source, batch, features_params_module, n_estimators=n_estimators)
    repo = root / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "registry@test")
    _run(repo, "git", "config", "user.name", "registry test")
    _dvc(repo, "init", "-q")
    (repo / "make.py").write_text(MAKE)
    (repo / "models").mkdir()
    outs = "".join(f"      - {path}\n" for path in SERVED)
    (repo / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: {sys.executable} make.py\n    deps: [make.py]\n"
        f"    params: [source]\n    outs:\n{outs}"
    )
    (repo / "params.yaml").write_text(f"source: {sources['a']}\n")
    _dvc(repo, "repro", "-q")
    first = _commit(repo, "model a", 0.8)
    (repo / "params.yaml").write_text(f"source: {sources['b']}\n")
    _dvc(repo, "repro", "-q")
    second = _commit(repo, "model b", 0.9)
    # the service's history: the first month, as the service tests seed it
    start = batch["tx_datetime"].min()
    month = batch[batch["tx_datetime"] < start + pd.Timedelta(days=30)]
    month[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]].to_parquet(
        root / "history.parquet"
    )
    md5 = {name: file_md5(source / "model.joblib") for name, source in sources.items()}
    return {
        "repo": repo,
        "commits": (first, second),
        "md5": md5,
        "history": root / "history.parquet",
    }


@pytest.fixture
def repo(template, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(template["repo"], copy, symlinks=True)
    return copy


def _at(repo: Path, commit: str) -> None:
    _run(repo, "git", "checkout", "-q", commit)
    _dvc(repo, "checkout", "-q")


def _register_both(repo: Path, template: dict) -> tuple[str, str]:
    first, second = template["commits"]
    _at(repo, first)
    one = register(repo).version
    _at(repo, second)
    two = register(repo, bump="minor").version
    return one, two


@pytest.mark.slow
def test_registering_refuses_a_workspace_that_is_not_what_head_records(repo, template):
    params = repo / "params.yaml"
    committed = params.read_text()
    params.write_text(committed.replace("model-b", "model-a"))
    with pytest.raises(RegistryError, match=r"uncommitted changes.*params.yaml"):
        register(repo)
    _run(repo, "git", "commit", "-qam", "params changed, not reproduced")
    with pytest.raises(UserError, match=r"`dvc status` reports changes in stage\(s\) train"):
        register(repo)
    _run(repo, "git", "reset", "-q", "--hard", "HEAD~1")
    model = repo / "models" / "model.joblib"
    model.unlink()
    shutil.copy(template["repo"].parent / "model-a" / "model.joblib", model)
    with pytest.raises(UserError, match="dvc status"):
        register(repo)
    _dvc(repo, "checkout", "-q", "--force")
    made = register(repo)
    assert made.md5s[SERVED[0]] == template["md5"]["b"]
    with pytest.raises(RegistryError, match=f"already fraud-model {made.version}"):
        register(repo)


@pytest.mark.slow
def test_promote_rollback_show_and_fetch_by_stage(repo, template, tmp_path):
    one, two = _register_both(repo, template)
    assert (one, two) == ("v0.0.1", "v0.1.0")
    promote(one, "prod", repo)
    promote(two, "staging", repo)
    promote(two, "prod", repo)  # the same second as the first promotion: the counter decides
    assert resolve(load_registry(repo), "prod")[0].version == two
    promote(one, "prod", repo)  # roll back
    assert resolve(load_registry(repo), "prod")[0].version == one
    with pytest.raises(RegistryError, match="already in prod"):
        promote(one, "prod", repo)
    # GTO numbers the artifact's assignments in one sequence across its stages
    tags = set(_run(repo, "git", "tag", "--list", "fraud-model*").split())
    assert tags == {"fraud-model@v0.0.1", "fraud-model@v0.1.0", "fraud-model#prod#1",
                    "fraud-model#staging#2", "fraud-model#prod#3",
                    "fraud-model#prod#4"}  # fmt: skip

    rows = show_rows(repo)
    assert [(r["version"], r["stages"], r["record"]) for r in rows] == [
        (two, "staging", "ok"),
        (one, "prod", "ok"),
    ]
    assert rows[0]["model MD5"] == template["md5"]["b"]
    assert rows[0]["test AUC ROC / AP / CP@100"] == "0.900 / 0.500 / 0.250"

    fetched = fetch("prod", tmp_path / "served", repo)
    assert (fetched.version.version, fetched.stage) == (one, "prod")
    assert file_md5(fetched.model) == template["md5"]["a"]
    for path in SERVED:
        assert (fetched.directory / path).is_file()
    assert json.loads((fetched.directory / "registry.json").read_text())["version"] == one
    # fetching another version replaces the directory whole
    fetch("staging", tmp_path / "served", repo)
    assert file_md5(fetched.model) == template["md5"]["b"]


@pytest.mark.slow
def test_serve_by_stage_answers_with_that_versions_model(repo, template, tmp_path):
    _, two = _register_both(repo, template)
    promote(two, "prod", repo)
    args = [
        "--model-version", "prod", "--store", str(tmp_path / "history.db"),
        "--history", str(template["history"]), "--clock", "data", "--max-ahead", "1 day",
    ]  # fmt: skip
    with Server(args, env={"FRAUDLAB_API_KEYS": KEY}, cwd=repo) as running:
        assert any(f"serving {two} (prod)" in line for line in running.log)
        status, text = running.request("GET", "/metrics", key=KEY)
        assert status == 200
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        (info,) = [s for s in samples if s.name == "fraudlab_model_info"]
        assert info.labels["model_version"] == template["md5"]["b"]
    # the files were fetched under --fetch-dir, one directory per version
    fetched = repo / ".cache" / "registry" / two / "models" / "model.joblib"
    assert file_md5(fetched) == template["md5"]["b"]
    with pytest.raises(UserError, match="--model-version replaces --model"):
        use_registered_version(parser().parse_args(["--model-version", "prod", "--model", "x"]))


@pytest.mark.slow
def test_a_tampered_tag_or_cache_is_refused_and_nothing_is_written(repo, template, tmp_path):
    one, two = _register_both(repo, template)
    first, second = template["commits"]
    promote(one, "prod", repo)
    # the version tag rewritten onto the other commit, annotation and all
    message = _run(repo, "git", "tag", "-l", "--format=%(contents)", f"fraud-model@{one}")
    _run(repo, "git", "tag", "-f", "-a", f"fraud-model@{one}", "-m", message, second)
    out = tmp_path / "served"
    with pytest.raises(RegistryError, match="the tag was moved or rewritten"):
        fetch(one, out, repo)
    assert not out.exists()
    # prod still points at the first commit, where no version is registered now
    with pytest.raises(RegistryError, match="where no version of fraud-model is registered"):
        fetch("prod", out, repo)
    done = subprocess.run(
        [*SERVE, "--model-version", one, "--no-auth", "--store", str(tmp_path / "h.db")],
        cwd=repo, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "moved or rewritten" in done.stderr
    assert not (tmp_path / "h.db").exists()
    # a lightweight version tag made by hand, on a commit whose message looks like a record
    _run(repo, "git", "checkout", "-q", first)
    _run(repo, "git", "commit", "-q", "--allow-empty", "-m", message)
    _run(repo, "git", "tag", "fraud-model@v9.0.0")
    with pytest.raises(RegistryError, match="records no MD5"):
        fetch("v9.0.0", out, repo)
    # a stage moved by hand onto a commit where nothing is registered
    _run(repo, "git", "commit", "-q", "--allow-empty", "-m", "unregistered")
    _run(repo, "git", "tag", "-a", "fraud-model#staging#7", "-m", "by hand")
    with pytest.raises(RegistryError, match="where no version of fraud-model is registered"):
        fetch("staging", out, repo)
    # DVC's cache holding other bytes under the model's hash
    md5 = template["md5"]["b"]
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    cached.write_bytes(b"not the model")
    with pytest.raises(UserError, match=f"differs from {md5}"):
        fetch(two, out, repo)
    assert not out.exists()
