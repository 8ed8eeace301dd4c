"""A private ``redis-server`` for the tests and benchmarks: on a free loopback port, with its
data in a directory of its own, never the machine's default instance; stopped on exit.

    with RedisServer(tmp_path, appendfsync="always") as server:
        store = RedisHistory(server.url)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    def __init__(
        self,
        directory: str | Path,
        *,
        appendfsync: str | None = "everysec",
        port: int | None = None,
        password: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.password = password
        self.extra = extra
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",  # snapshots off: the AOF (or nothing) is the persistence under test
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.appendfsync is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args + list(self.extra)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            self.arguments(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = self._client(socket_timeout=1)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    # a restart replays its AOF first, answering LOADING meanwhile
                    if client.ping() and client.info("persistence")["loading"] == 0:
                        return self
                except redis.exceptions.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()  # never left running behind a failed start
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: what a crash does (nothing flushed on the way out)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        """Redis's own CPU time so far (user + system)."""
        client = self._client()
        try:
            info = client.info("cpu")
        finally:
            client.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def _client(self, **options: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
