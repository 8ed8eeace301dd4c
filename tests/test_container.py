"""The scoring service's container image, built and run on a real Docker engine: read-only, as
a non-root user, healthy, scoring as the batch does, refusing a request without a key, and
stopping on SIGTERM without losing what it acknowledged.

No public registry is reachable in CI, so the image is built on a stand-in for
``python:3.11-slim-bookworm`` made from Debian's packages (``.ci/run`` makes it and names it in
``FRAUDLAB_DOCKER_BASE``); without it, or without an engine, the test is skipped (failed when
``FRAUDLAB_REQUIRE_DOCKER`` is set)."""

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

from fraudlab.modeling.pipeline import predict_scores
from fraudlab.serving.app import request_fields
from test_service import (  # noqa: F401 (module fixtures)
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
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md",
                 "requirements.lock", "requirements-serve.txt")  # fmt: skip


def _docker(*args: str, check: bool = True, **options) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check, **options)


@pytest.fixture(scope="module")
def base_image() -> str:
    def unavailable(why: str) -> None:
        if os.environ.get("FRAUDLAB_REQUIRE_DOCKER"):
            pytest.fail(f"FRAUDLAB_REQUIRE_DOCKER is set but {why}")
        pytest.skip(why)

    base = os.environ.get("FRAUDLAB_DOCKER_BASE")
    if not Path(DOCKER).exists():
        unavailable("no Docker engine (Debian: apt-get install docker.io)")
    if _docker("info", check=False).returncode != 0:
        unavailable("the Docker engine is not running")
    if not base:
        unavailable("FRAUDLAB_DOCKER_BASE names no base image (.ci/run makes one)")
    return base


@pytest.fixture(scope="module")
def image(base_image, deployment, tmp_path_factory):  # noqa: F811
    """The image built from the repository's Dockerfile, with the test's model baked in."""
    context = tmp_path_factory.mktemp("context")
    for name in CONTEXT_FILES:
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(deployment["root"] / "models", context / "models")
    shutil.copy(deployment["root"] / "dvc.lock", context / "dvc.lock")
    tag = f"fraudlab-serve-test:{uuid.uuid4().hex[:8]}"
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    started = time.monotonic()
    built = _docker(
        "build", "--build-arg", f"BASE={base_image}", "--secret", f"id=ca,src={ca}",
        "--build-arg", "MODEL_MD5=test", "-t", tag, str(context),
        check=False, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    print(f"image built in {time.monotonic() - started:.0f} s")
    yield tag
    _docker("rmi", "-f", tag, check=False)


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


def test_the_image_serves_read_only_as_non_root_and_stops_cleanly(
    image,
    deployment,  # noqa: F811
    batch,  # noqa: F811
):
    later = replayed_period(deployment, batch, days=1).head(50)
    names = deployment["names"]
    name, volume = f"fraudlab-test-{uuid.uuid4().hex[:8]}", f"fraudlab-test-{uuid.uuid4().hex[:8]}"
    history = deployment["root"] / "history.parquet"
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
        expected = predict_scores(deployment["pipeline"], later, features=names)
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
