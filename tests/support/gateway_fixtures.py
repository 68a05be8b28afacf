"""Pytest plugin: gRPC gateways in front of the session's Triton (tiny checkpoint).

Each gateway is a real grpc.aio server on a free port, run on its own event loop in a
background thread of the test process (fast to start and restart). Fixtures:
- `gateway_factory`: start gateways with setting overrides; `restart()` keeps the port and store;
- `gateway`: the session's gateway on SQLite; `stub` a sync EmbeddingService stub for it;
- `store_gateway`: a fresh gateway per test, parametrized over SQLite and Redis (`store_url`);
- `v2_gateway`: the session's gateway (SQLite) in front of `v2_triton_process` (cde-small-v2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.gateway.app import Gateway
from cde_server.gateway.settings import GatewaySettings
from cde_server.triton.launcher import TritonProcess

T = TypeVar("T")
START_TIMEOUT_S = 60.0


class GatewayThread:
    """A `Gateway` served on an event loop in a daemon thread."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.gateway: Gateway | None = None
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(ignore_poller_wakeups)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """host:port of the running gateway."""
        assert self.gateway is not None, "gateway not started"
        return self.gateway.address

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_S) -> T:
        """Run `coroutine` on the gateway's loop and wait for its result; on a timeout, print
        where the loop's tasks and every thread are stuck (for the test's captured output)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            print(f"gateway loop: no result after {timeout} s; its tasks:", file=sys.stderr)
            for task in asyncio.all_tasks(self._loop):
                task.print_stack(file=sys.stderr)
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
            raise

    def start(self) -> GatewayThread:
        """Start a gateway (binds settings.port; 0 picks a free one, remembered for restarts)."""
        self.gateway = self.run(self._make_and_start())
        self.settings = self.settings.model_copy(update={"port": self.gateway.port})
        return self

    async def _make_and_start(self) -> Gateway:
        gateway = Gateway(self.settings)
        await gateway.start()
        return gateway

    def stop(self, grace_s: float = 0.5) -> None:
        """Stop the gateway (the thread and loop stay for a restart)."""
        if self.gateway is not None:
            self.run(self.gateway.stop(grace_s))
            self.gateway = None

    def restart(self, **overrides: Any) -> GatewayThread:
        """Stop, then start a new gateway with the same port and store (plus overrides)."""
        self.stop()
        self.settings = self.settings.model_copy(update=overrides)
        return self.start()

    def close(self) -> None:
        """Stop the gateway and the loop thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def channel(self) -> grpc.Channel:
        """A new insecure channel to the gateway (close it after use)."""
        return grpc.insecure_channel(self.address)


def ignore_poller_wakeups(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """grpc.aio wakes every loop of the process on each event; all but one then log a harmless
    BlockingIOError (grpc/grpc#25364). Tests run a second loop here, so silence exactly that."""
    if isinstance(context.get("exception"), BlockingIOError):
        return
    loop.default_exception_handler(context)


def gateway_settings(triton_url: str, store_url: str, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway: free port, no metrics endpoint, fast health checks."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "store": store_url,
        "triton_url": triton_url,
        "metrics_port": None,
        "health_interval_s": 0.5,
        "shutdown_grace_s": 0.5,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return GatewaySettings(**values)


GatewayFactory = Callable[..., GatewayThread]


@pytest.fixture
def gateway_factory(triton_grpc_url: str, tmp_path: Path) -> Iterator[GatewayFactory]:
    """`make(store_url=None, **settings)` starts a gateway; all are stopped after the test."""
    started: list[GatewayThread] = []

    def make(store_url: str | None = None, **overrides: Any) -> GatewayThread:
        store = store_url or f"sqlite://{tmp_path / f'store-{len(started)}.db'}"
        overrides.setdefault("triton_url", triton_grpc_url)
        settings = gateway_settings(overrides.pop("triton_url"), store, **overrides)
        gateway = GatewayThread(settings)
        started.append(gateway)
        return gateway.start()

    try:
        yield make
    finally:
        for gateway in started:
            gateway.close()


@pytest.fixture(scope="session")
def gateway(
    triton_grpc_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    """The session's gateway (SQLite store), shared by tests that do not change settings."""
    store = tmp_path_factory.mktemp("gateway-store") / "store.db"
    thread = GatewayThread(gateway_settings(triton_grpc_url, f"sqlite://{store}"))
    thread.start()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture(scope="session")
def stub(gateway: GatewayThread) -> Iterator[pb_grpc.EmbeddingServiceStub]:
    """Sync stub on the session's gateway."""
    with gateway.channel() as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


@pytest.fixture
def store_gateway(store_url: str, gateway_factory: GatewayFactory) -> GatewayThread:
    """A gateway on a fresh store; parametrized over SQLite and Redis."""
    return gateway_factory(store_url)


@pytest.fixture(scope="session")
def v2_gateway(
    v2_triton_process: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    """A gateway (SQLite store) in front of the cde-small-v2 Triton, started on first use."""
    store = tmp_path_factory.mktemp("v2-gateway-store") / "store.db"
    thread = GatewayThread(gateway_settings(v2_triton_process.grpc_url, f"sqlite://{store}"))
    thread.start()
    try:
        yield thread
    finally:
        thread.close()
