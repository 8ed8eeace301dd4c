"""Nothing is unpickled before its hash matches dvc.lock: a swapped model file is refused and its
payload never runs; broken or foreign files are one-line errors."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import joblib
import pytest
import yaml

from fraudlab.integrity.lock import (
    IntegrityError,
    file_md5,
    load_verified_pickle,
    locked_outputs,
    verify_file,
)
from fraudlab.stages.evaluate import evaluate
from helpers import Payload, run_stage


def _lock(root: Path, outputs: dict[str, bytes]) -> Path:
    """A dvc.lock recording ``outputs`` (relative path -> bytes) as the train stage's."""
    lock = root / "dvc.lock"
    outs = [
        {"path": path, "hash": "md5", "md5": hashlib.md5(data).hexdigest(), "size": len(data)}
        for path, data in outputs.items()
    ]
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {"outs": outs}}}))
    return lock


def _pickled(obj) -> bytes:
    return pickle.dumps(obj)


def test_file_md5_is_dvcs_hash(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert file_md5(path) == hashlib.md5(b"abc" * 1_000_000).hexdigest()


def test_the_payload_would_run_if_loaded(tmp_path):
    """Control: the payload is real, so its absence below proves the check stopped it."""
    marker = tmp_path / "ran"
    pickle.loads(_pickled(Payload(marker)))
    assert marker.exists()


def test_a_swapped_model_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "model.joblib"
    lock = _lock(tmp_path, {"models/model.joblib": _pickled({"pipeline": 1})})
    model.write_bytes(_pickled(Payload(marker)))

    with pytest.raises(IntegrityError, match=r"model\.joblib: MD5 \w+ differs from \w+ recorded "):
        load_verified_pickle(model, lock_path=lock)
    assert not marker.exists()


def test_the_recorded_file_loads(tmp_path):
    data = _pickled({"a": 1})
    (tmp_path / "m.pkl").write_bytes(data)
    assert load_verified_pickle(tmp_path / "m.pkl", lock_path=_lock(tmp_path, {"m.pkl": data})) == {
        "a": 1
    }


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "dvc.lock").unlink(), r"dvc\.lock not found: run `dvc repro`"),
        (lambda d: (d / "m.pkl").unlink(), r"m\.pkl: missing \(recorded by stage train"),
        (
            lambda d: (d / "other.pkl").write_bytes(_pickled(1)),
            r"other\.pkl: not an output recorded in .*refusing to load it",
        ),
    ],
    ids=["no-lock", "missing-file", "unrecorded-file"],
)
def test_unverifiable_files_are_refused(tmp_path, setup, message):
    data = _pickled({"a": 1})
    (tmp_path / "m.pkl").write_bytes(data)
    _lock(tmp_path, {"m.pkl": data})
    setup(tmp_path)
    target = tmp_path / ("other.pkl" if (tmp_path / "other.pkl").exists() else "m.pkl")
    with pytest.raises(IntegrityError, match=message):
        verify_file(target, lock_path=tmp_path / "dvc.lock")


def test_a_recorded_but_truncated_file_is_a_one_line_error(tmp_path):
    data = _pickled({"a": list(range(1000))})[:-50]
    (tmp_path / "m.pkl").write_bytes(data)
    with pytest.raises(IntegrityError, match=r"m\.pkl: not a loadable model file \("):
        load_verified_pickle(tmp_path / "m.pkl", lock_path=_lock(tmp_path, {"m.pkl": data}))


def test_locked_outputs_know_their_stage_and_caching():
    lock = {"stages": {"s": {"outs": [{"path": "a", "md5": "1"}, {"path": "m.json", "md5": "2"}]}}}
    dvc_yaml = {"stages": {"s": {"outs": ["a"], "metrics": [{"m.json": {"cache": False}}]}}}
    outs = locked_outputs(lock, dvc_yaml)
    assert [(o.stage, o.path, o.cached) for o in outs] == [("s", "a", True), ("s", "m.json", False)]


def _evaluate_argv(root: Path) -> list[str]:
    params = root / "params.yaml"
    committed = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params.write_text(yaml.safe_dump({"evaluate": committed["evaluate"]}))
    out = root / "out"
    return [
        str(root / "models" / "model.joblib"),
        *("--params", str(params), "--lock", str(root / "dvc.lock")),
        *("--test", str(root / "test.parquet"), "--validation-scores", str(root / "v.parquet")),
        *("--test-scores", str(out / "test.parquet"), "--live-dir", str(out / "live")),
        *("--serving", str(out / "serving.json")),
    ]


def test_the_evaluate_stage_refuses_a_swapped_model_and_the_payload_never_runs(tmp_path, caplog):
    marker = tmp_path / "ran"
    (tmp_path / "models").mkdir()
    _lock(tmp_path, {"models/model.joblib": _pickled({"pipeline": 1})})
    joblib.dump(Payload(marker), tmp_path / "models" / "model.joblib")

    assert run_stage(evaluate, _evaluate_argv(tmp_path), caplog) == 1
    assert not marker.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "model.joblib: MD5" in errors[0]
    assert "`dvc repro train`" in errors[0]
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], r"is not a fraudlab model artifact \(a list, not a ModelArtifact\)"),
        ({"pipeline": "x", "features": []}, r"\(a dict, not a ModelArtifact\): rerun the train"),
    ],
)
def test_the_evaluate_stage_refuses_what_is_not_a_model_artifact(tmp_path, caplog, obj, message):
    (tmp_path / "models").mkdir()
    joblib.dump(obj, tmp_path / "models" / "model.joblib")
    _lock(tmp_path, {"models/model.joblib": (tmp_path / "models" / "model.joblib").read_bytes()})

    assert run_stage(evaluate, _evaluate_argv(tmp_path), caplog) == 1
    assert re.search(message, caplog.text), caplog.text
    assert not (tmp_path / "out").exists()
