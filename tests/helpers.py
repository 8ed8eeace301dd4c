"""Test library shared by test modules (imported, never collected)."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from fraudlab.core.params import FeaturesParams
from fraudlab.core.runner import run

_COMMITTED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def unavailable(what: str, *, required_by: str, hint: str) -> None:
    """Skip a test whose real component is missing here, or fail it where ``required_by`` (an
    environment variable CI sets) says the component must be there."""
    import pytest

    if os.environ.get(required_by):
        pytest.fail(f"{required_by} is set but {what}")
    pytest.skip(f"{what} ({hint})")


def command_or_skip(names: tuple[str, ...], *, required_by: str, hint: str) -> str:
    """The path of the first of ``names`` on PATH, else :func:`unavailable`."""
    import shutil

    path = next(filter(None, map(shutil.which, names)), None)
    if path is None:
        unavailable(f"no {names[0]} on PATH", required_by=required_by, hint=hint)
    return path


def run_stage(stage: Callable, argv: list[str], caplog) -> int:
    """Exit status of a stage run in this process the way its module's __main__ runs it; its
    log lands in ``caplog``."""
    handler = signal.getsignal(signal.SIGTERM)
    caplog.clear()
    caplog.set_level(logging.INFO)
    try:
        run(stage, argv)
    except SystemExit as exc:
        return int(exc.code)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return 0


class Payload:
    """A pickle that runs a command when loaded, as an attacker's model file would: it creates
    ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# `fraudlab serve` on loopback, on a port the system picks
SERVE = [sys.executable, "-m", "fraudlab", "serve", "--host", "127.0.0.1", "--port", "0"]


class Server:
    """A real ``fraudlab serve`` process on 127.0.0.1 (an ephemeral port), spoken to over HTTP."""

    def __init__(
        self, args: list[str], *, env: dict[str, str] | None = None, cwd=None, preexec_fn=None
    ) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.preexec_fn = preexec_fn  # e.g. resource limits for the server process
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log: list[str] = []

    def start(self, *, timeout: float = 120) -> Server:
        self.process = subprocess.Popen(
            [*SERVE, *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        for line in self.process.stderr:
            self.log.append(line)
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match[1]
                break
        else:
            raise RuntimeError(f"the server did not start: {''.join(self.log)}")
        threading.Thread(target=self._drain, daemon=True).start()
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {''.join(self.log)}")
            time.sleep(0.1)
        raise RuntimeError(f"the server never became ready: {''.join(self.log)}")

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        key: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict | str]:
        """(status, JSON body or text) of one request on a new connection."""
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        sent = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        sent.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def refused_start(args: list[str], *, env: dict[str, str] | None = None, cwd=None, preexec_fn=None):
    """The exit status and log of a ``fraudlab serve`` that must stop before listening."""
    done = subprocess.run(
        [*SERVE, *args],
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stderr


def features_with(**values) -> FeaturesParams:
    """The committed params' features section with ``values`` on top."""
    committed = yaml.safe_load(_COMMITTED_PARAMS.read_text())["features"]
    return FeaturesParams(**(committed | values))


def features_yaml(**values) -> str:
    """``features_with(**values)`` as a params.yaml section (one line)."""
    section = features_with(**values).model_dump()
    return "features: " + yaml.safe_dump(section, default_flow_style=True, width=10**6)


def exact_columns(names: list[str]) -> list[int]:
    """Positions of the features the online path gives bit for bit; the others (means and rates
    from running sums, which online start at the stored history's first row) agree to 1e-9."""
    summed = ("avg_amount", "risk", "amount_over_mean")
    return [k for k, name in enumerate(names) if not any(part in name for part in summed)]


def cells(line: str) -> list[str]:
    """The cells of one row of a Markdown table, stripped of their padding."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
