"""uvicorn serving the HTTP app on the gateway's event loop, with the gRPC port's TLS.

`HttpListener.start()` binds the socket itself (so port 0 picks a free port and the bound port
is known at once), then runs `uvicorn.Server.serve` as a task; `stop()` lets in-flight
requests finish (up to the grace), then closes. uvicorn's own signal handling is off: the
gateway's process owns SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from cde_server.gateway.settings import GatewaySettings

logger = logging.getLogger("cde_server.gateway.http")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handlers (the gateway stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpListener:
    """The HTTP API's port: construct, `await start()` (→ bound port), `await stop()`."""

    def __init__(self, app: FastAPI, settings: GatewaySettings) -> None:
        self._app = app
        self._settings = settings
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        """ "https" with CDE_TLS_CERT, else "http"."""
        return "https" if self._settings.tls_cert is not None else "http"

    async def start(self) -> int:
        """Bind CDE_HOST:CDE_HTTP_PORT and start serving; returns the bound port."""
        s = self._settings
        assert s.http_port is not None
        sock = _bind(s.host, s.http_port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=int(max(s.shutdown_grace_s, 1)),
            ssl_certfile=str(s.tls_cert) if s.tls_cert is not None else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key is not None else None,
            ssl_ca_certs=str(s.tls_client_ca) if s.tls_client_ca is not None else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca is not None else ssl.CERT_NONE,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                await self._task  # raises what start-up raised
                raise OSError(f"HTTP server on {s.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Finish in-flight requests (up to `grace_s`), then close the port."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s + 1.0)
        except TimeoutError:
            self._server.force_exit = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout=2.0)
        self._server = None
        self._task = None


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    addresses = socket.getaddrinfo(host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    if addresses:
        family = addresses[0][0]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP (proto 0 would leave Nagle on: ~40 ms per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addresses[0][4] if addresses else (host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} (CDE_HTTP_PORT): {exc}") from exc
    return sock
