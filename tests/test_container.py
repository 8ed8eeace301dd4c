"""The scoring service's container image, built and run on a real Docker engine: read-only, as
a non-root user, healthy, scoring as the batch does, refusing a request without a key, and
stopping on SIGTERM without losing what it acknowledged.

The image is built by ``.ci/build-image``, the script the deploy workflow builds releases with.
By default it serves a small model trained here; with ``FRAUDLAB_SERVED`` naming a version
fetched by ``fraudlab registry fetch`` (the deploy workflow), that version is built, tagged with
``FRAUDLAB_IMAGE_TAGS`` (kept after the test) and put through the same checks, its scores
compared with the same model's batch scores on simulated transactions.

No public registry is reachable in CI, so the image is built on a stand-in for
``python:3.11-slim-bookworm`` made from Debian's packages (``.ci/docker-setup`` makes it and names
it in ``FRAUDLAB_DOCKER_BASE``); without it, or without an engine, the test is skipped (failed
when ``FRAUDLAB_REQUIRE_DOCKER`` is set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from fraudlab.core import schema
from fraudlab.features.batch import build_features
from fraudlab.integrity.lock import file_md5
from fraudlab.modeling.artifact import load_model
from fraudlab.modeling.pipeline import predict_scores
from fraudlab.serving.app import request_fields
from helpers import unavailable
from test_service import (  # noqa: F401 (module fixtures)
    DAY,
    KEY,
    batch,
    deployment,
    features_params_module,
    replayed_period,
)

pytestmark = pytest.mark.slow  # builds an image and runs a container

ROOT = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"  # Debian's client (BuildKit built in); see PITFALLS
IMAGE_BUDGET_BYTES = 1024**3  # the image stays under 1 GiB
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock")
RELEASE = os.environ.get("FRAUDLAB_SERVED")  # a fetched registry version to build and test
RELEASE_TAGS = os.environ.get("FRAUDLAB_IMAGE_TAGS", "").split()  # kept after the test


def _docker(*args: str, check: bool = True, **options) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check, **options)


@pytest.fixture(scope="module")
def base_image() -> str:
    def missing(why: str) -> None:
        unavailable(why, required_by="FRAUDLAB_REQUIRE_DOCKER", hint="see .ci/docker-setup")

    base = os.environ.get("FRAUDLAB_DOCKER_BASE")
    if not Path(DOCKER).exists():
        missing("no Docker engine (Debian: apt-get install docker.io)")
    if _docker("info", check=False).returncode != 0:
        missing("the Docker engine is not running")
    if not base:
        missing("FRAUDLAB_DOCKER_BASE names no base image (.ci/run makes one)")
    return base


@pytest.fixture(scope="module")
def subject(request, tmp_path_factory, small_transactions) -> dict:
    """What the image serves and what its answers must equal: the served directory (dvc.lock and
    models/), the model's pipeline and features, the batch features, the history to seed."""
    if not RELEASE:
        trained = request.getfixturevalue("deployment")
        root = trained["root"]
        features = request.getfixturevalue("batch")
        return {**trained, "served": root, "batch": features, "history": root / "history.parquet"}
    served = Path(RELEASE).resolve()
    model = load_model(served / "models" / "model.joblib", lock_path=served / "dvc.lock")
    features = build_features(small_transactions, model.features_config)
    cut = features[schema.TX_DATETIME].min() + 30 * DAY
    history = tmp_path_factory.mktemp("release") / "history.parquet"
    features[features[schema.TX_DATETIME] < cut][list(schema.REQUIRED_COLUMNS)].to_parquet(history)
    return {"served": served, "pipeline": model.pipeline, "names": list(model.features),
            "cut": cut, "batch": features, "history": history}  # fmt: skip


@pytest.fixture(scope="module")
def image(base_image, subject, tmp_path_factory):
    """The image built by .ci/build-image, with the subject's model baked in."""
    context = tmp_path_factory.mktemp("context")
    for name in CONTEXT_FILES:
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
    served = "build/served" if RELEASE else "."
    for name in ("dvc.lock", "registry.json", "models"):
        if (subject["served"] / name).exists():
            copy = shutil.copytree if name == "models" else shutil.copy
            (context / served).mkdir(parents=True, exist_ok=True)
            copy(subject["served"] / name, context / served / name)
    tag = f"fraudlab-serve-test:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / ".ci" / "build-image"), str(context), served, tag, *RELEASE_TAGS],
        capture_output=True, text=True, check=False,
        env={**os.environ, "FRAUDLAB_DOCKER_BASE": base_image},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    print(f"image built in {time.monotonic() - started:.0f} s")
    yield tag
    _docker("rmi", tag, check=False)  # the release's own tags stay


def _request(port: int, path: str, body: dict | None = None, *, key: str | None = KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _run(image: str, name: str, volume: str, history: Path) -> int:
    """Start the container read-only as its non-root user; its host port once healthy."""
    _docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "-v", f"{volume}:/var/lib/fraudlab", "-v", f"{history}:/history.parquet:ro",
        "-e", f"FRAUDLAB_API_KEYS={KEY}", "-p", "127.0.0.1::8000", image,
        "--store", "/var/lib/fraudlab/history.db", "--history", "/history.parquet",
        "--clock", "data", "--max-ahead", "1 day",
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = json.loads(_docker("inspect", "-f", "{{json .State}}", name).stdout)
        if state["Health"]["Status"] == "healthy":
            port = _docker("port", name, "8000/tcp").stdout.strip().rsplit(":", 1)[1]
            return int(port)
        assert state["Running"], _docker("logs", name, check=False).stderr[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"never healthy: {_docker('logs', name, check=False).stderr[-3000:]}")


def test_the_image_serves_read_only_as_non_root_and_stops_cleanly(image, subject):
    later = replayed_period(subject, subject["batch"], days=1).head(50)
    names = subject["names"]
    name, volume = f"fraudlab-test-{uuid.uuid4().hex[:8]}", f"fraudlab-test-{uuid.uuid4().hex[:8]}"
    history = subject["history"]
    labels = json.loads(_docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout)
    served = subject["served"]
    assert labels["org.fraudlab.model.md5"] == file_md5(served / "models" / "model.joblib")
    if RELEASE:
        registered = json.loads((served / "registry.json").read_text())
        assert labels["org.fraudlab.model.version"] == registered["version"]
        assert labels["org.opencontainers.image.revision"] == registered["commit"]
    try:
        started = time.monotonic()
        port = _run(image, name, volume, history)
        print(f"start to healthy: {time.monotonic() - started:.1f} s")
        assert _docker("exec", name, "id", "-u").stdout.strip() != "0"
        assert (
            _request(port, "/v1/score", request_fields(next(later.itertuples())), key=None)[0]
            == 401
        )
        scores = []
        for row in later.itertuples(index=False):
            status, answer = _request(port, "/v1/score", request_fields(row))
            assert status == 200, answer
            scores.append(answer["score"])
        expected = predict_scores(subject["pipeline"], later, features=names)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
        stopping = time.monotonic()
        _docker("stop", "-t", "30", name)
        assert time.monotonic() - stopping < 10  # graceful, not killed at the timeout
        _docker("rm", name)
        # what was acknowledged is on the volume: a retry after a restart gets the same score
        port = _run(image, name, volume, history)
        row = next(later.tail(1).itertuples(index=False))
        status, answer = _request(port, "/v1/score", request_fields(row))
        assert (status, answer["score"]) == (200, scores[-1])
        size = int(_docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
        print(f"image size: {size / 2**20:.0f} MiB (budget {IMAGE_BUDGET_BYTES / 2**20:.0f})")
        assert size < IMAGE_BUDGET_BYTES
    finally:
        _docker("rm", "-f", name, check=False)
        _docker("volume", "rm", "-f", volume, check=False)
