"""Pytest plugin: real `redis-server` processes and store URLs for both backends.

- `redis_server` (session): one shared server; tests isolate themselves with a unique key
  prefix in the URL, so nothing is flushed between tests.
- `redis_server_factory`: dedicated servers a test may stop, freeze or restart (persistence
  with `appendonly yes`, so a restart keeps the data).
- `store_url`: parametrized over "sqlite" and "redis".

The binary is `$CDE_TEST_REDIS_SERVER` or `redis-server` on PATH (CI installs it with apt);
if it is missing the tests fail with a clear message rather than skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """Path of the redis-server binary, or fail the test with an install hint."""
    binary = os.environ.get("CDE_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None and Path("/usr/bin/redis-server").exists():
        binary = "/usr/bin/redis-server"
    if binary is None:
        pytest.fail(
            "redis-server not found: install it (apt-get install redis-server) or set "
            "CDE_TEST_REDIS_SERVER to its path",
            pytrace=False,
        )
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server child process on a fixed port and data directory."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        """Not started yet; `start()` picks a free port the first time."""
        self.directory = directory
        self.persistent = persistent
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING."""
        if self._process is not None:
            raise RuntimeError("redis-server already running")
        keep_port = self.port != 0  # a restart must come back on the same port
        for _attempt in range(3):
            self.port = self.port if keep_port else free_port()
            persistence = ["--appendonly", "yes"] if self.persistent else ["--appendonly", "no"]
            command = [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                *persistence,
                "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
            ]  # fmt: skip
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline and self._process.poll() is None:
                if _answers_ping(self.port):
                    return
                time.sleep(0.02)
            self.stop()  # most likely the port was taken meanwhile: try another
        log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start; log tail:\n{log}")

    def stop(self) -> None:
        """Shut down gracefully (flushes the append-only file); kill if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case a test froze it
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo `freeze`."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One shared, non-persistent redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], RedisServer]]:
    """Start dedicated persistent servers (stopped after the test)."""
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-own"), persistent=True)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store: a fresh SQLite file, or a fresh key prefix on `redis_server`."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix={unique_prefix()}"
