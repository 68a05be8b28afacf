"""Pytest plugin: gateways as real `cde serve` processes (for signals, crashes and scale-out).

`GatewayProcess(env)` runs `cde serve` in front of an external Triton (CDE_TRITON_URL must be
in `env` or the overrides) and waits for its "gateway ready on host:port" line. It can be sent
signals, killed, and restarted on the same port and store. Fixture `gateway_process_factory`
starts them with settings overrides and stops every one after the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.store_fixtures import free_port

READY_PREFIX = "cde serve: gateway ready on "
START_TIMEOUT_S = 120.0


class GatewayProcess:
    """One `cde serve` process; `start()` returns once it printed its address."""

    def __init__(self, settings: dict[str, str], cde: Path | None = None) -> None:
        """`settings`: CDE_* variables (without the prefix, lower case: {"store": ...});
        `cde`: the `cde` executable (default: this venv's)."""
        self.cde = cde or Path(sys.executable).parent / "cde"
        self.settings = {"port": str(free_port()), "metrics_port": "off", **settings}
        self.address = ""
        self.process: subprocess.Popen[str] | None = None
        self._lines: deque[str] = deque(maxlen=400)
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        """Process id of the running gateway."""
        assert self.process is not None, "gateway not started"
        return self.process.pid

    def env(self) -> dict[str, str]:
        """The environment the process runs with."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.update({f"CDE_{key.upper()}": value for key, value in self.settings.items()})
        return env

    def start(self, timeout_s: float = START_TIMEOUT_S) -> GatewayProcess:
        """Start and wait for the ready line (the gateway may still be NOT_SERVING)."""
        self._ready.clear()
        self.process = subprocess.Popen(
            [str(self.cde), "serve"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"gateway did not start; output:\n{self.output()}")
        return self

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX):
                self.address = line[len(READY_PREFIX) :].strip()
                self._ready.set()

    def output(self) -> str:
        """The last lines the process printed (stdout and stderr)."""
        return "\n".join(self._lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send `signum` to the gateway."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit; its return code."""
        assert self.process is not None, "gateway not started"
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> GatewayProcess:
        """Stop and start again with the same port and store."""
        self.stop()
        return self.start()


GatewayProcessFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_process_factory(
    triton_grpc_url: str, tmp_path: Path
) -> Iterator[GatewayProcessFactory]:
    """`make(**settings)` starts a `cde serve` gateway (session Triton, own SQLite store by
    default); every one is stopped after the test."""
    started: list[GatewayProcess] = []

    def make(**settings: Any) -> GatewayProcess:
        values = {
            "triton_url": triton_grpc_url,
            "store": f"sqlite://{tmp_path / f'gateway-{len(started)}.db'}",
            "health_interval_s": "0.5",
            "log_level": "WARNING",
            **{key: str(value) for key, value in settings.items()},
        }
        gateway = GatewayProcess(values)
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        gateway.stop()
