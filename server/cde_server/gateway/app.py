"""The gateway process: a grpc.aio server with EmbeddingService, health, reflection, metrics,
and the HTTP API (`gateway.http`, uvicorn on the same event loop) over the same operations.

`Gateway(settings)` wires store, Triton client, service and health monitor; `start()` binds
the ports (returning the gRPC one; `http_port` is the HTTP one, None when CDE_HTTP_PORT=off),
`stop()` stops gracefully: health turns NOT_SERVING, new calls are refused, in-flight calls
get `shutdown_grace_s`, then connections and the store are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cde_server.domain.prompts import BUILTIN_PROMPTS, DEFAULT_PROMPT
from cde_server.gateway import listeners
from cde_server.gateway.admission import FairAdmission
from cde_server.gateway.auth import Authenticator
from cde_server.gateway.call_scope import CallScopes
from cde_server.gateway.decoding import DecodeGuard, MessageLimits
from cde_server.gateway.grpc_service import GrpcEmbeddingService
from cde_server.gateway.health import HealthMonitor
from cde_server.gateway.http.app import create_http_app
from cde_server.gateway.http.server import HttpListener
from cde_server.gateway.limits import tenant_limiter
from cde_server.gateway.metrics import GatewayMetrics
from cde_server.gateway.service import EmbeddingService
from cde_server.gateway.settings import GatewaySettings
from cde_server.inference.pool import TritonPool
from cde_server.inference.served_model import ServedModel
from cde_server.inference.triton_endpoint import TritonTls
from cde_server.stores import Store, open_store, redacted_url

logger = logging.getLogger("cde_server.gateway.app")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


class Gateway:
    """One gateway: construct, `await start()`, later `await stop()`."""

    def __init__(self, settings: GatewaySettings) -> None:
        if settings.triton_url is None:
            raise ValueError("the gateway needs CDE_TRITON_URL (cde serve sets it)")
        self.settings = settings
        self.authenticator = Authenticator.from_file(settings.api_keys_file, settings.api_keys)
        self.metrics = GatewayMetrics()
        self.inference = TritonPool(
            settings.triton_endpoints,
            timeout_s=settings.triton_timeout_s,
            embed_path=settings.embed_path,
            tokenizer=settings.gateway_tokenizer,
            observer=self.metrics,
            tls=_triton_tls(settings),
            secret=None
            if settings.triton_secret is None
            else settings.triton_secret.get_secret_value(),
        )
        self.model = ServedModel(self.inference, document_prefix=BUILTIN_PROMPTS[DEFAULT_PROMPT])
        self.port = 0
        self.started = asyncio.Event()  # set once every listener is bound
        self.http_port: int | None = None
        self._http: HttpListener | None = None
        self.health_port: int | None = None
        self._health_server: grpc.aio.Server | None = None
        self.metrics_port: int | None = None
        self._store: Store | None = None
        self._server: grpc.aio.Server | None = None
        self._health: HealthMonitor | None = None
        self._warm_up: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """Whether the last health check found Triton and the store reachable."""
        return self._health is not None and self._health.serving

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"{self.settings.host}:{self.port}"

    @property
    def http_url(self) -> str | None:
        """Base URL of the HTTP API (None when it is off)."""
        if self._http is None or self.http_port is None:
            return None
        return f"{self._http.scheme}://{self.settings.host}:{self.http_port}"

    async def start(self) -> int:
        """Open the store, bind the port and start serving; returns the bound port."""
        s = self.settings
        self._store = await open_store(s.store)
        limiter = tenant_limiter(s, self.authenticator)
        calls = CallScopes(self.metrics, authenticator=self.authenticator, limiter=limiter)
        self.service = EmbeddingService(
            settings=s,
            inference=self.inference,
            store=self._store,
            model=self.model,
            metrics=self.metrics,
            limiter=limiter,
            admission=FairAdmission(
                s.max_texts_in_flight,
                s.max_queued_texts,
                on_refused=self.metrics.rejections.labels("capacity").inc,
            ),
        )
        self._health = HealthMonitor(
            inference=self.inference,
            store=self._store,
            model=self.model,
            metrics=self.metrics,
            services=[SERVICE_NAME],
            interval_s=s.health_interval_s,
        )
        server = grpc.aio.server(
            interceptors=[
                DecodeGuard(
                    calls,
                    counted_services=[SERVICE_NAME],
                    limits=message_limits(s),
                    idle_timeout_s=s.stream_idle_timeout_s,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                # a connection that never completes its HTTP/2 handshake is closed
                ("grpc.server_handshake_timeout_ms", int(s.handshake_timeout_s * 1000)),
            ],
        )
        pb_grpc.add_EmbeddingServiceServicer_to_server(
            GrpcEmbeddingService(self.service, calls), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            server,
        )  # fmt: skip
        self.port = listeners.bind_api_port(server, s)
        await self._health.start()
        await server.start()
        self._server = server
        if s.http_port is not None:
            health = self._health
            self._http = HttpListener(
                create_http_app(self.service, calls, lambda: health.serving), s
            )
            self.http_port = await self._http.start()
        if s.health_port is not None:
            self._health_server, self.health_port = await listeners.start_health_server(
                s, self._health.servicer
            )
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve(s.host, s.metrics_port)
        if s.warm_up_default_context:
            self._warm_up = asyncio.create_task(self.model.warm_up())
        logger.info(
            "gateway listening on %s, HTTP %s (Triton %s, store %s, %s)",
            self.address,
            self.http_url or "off",
            self.inference.describe(),
            redacted_url(s.store),
            "SERVING" if self._health.serving else "NOT_SERVING",
        )
        self.started.set()
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop (in-flight calls get `grace_s`, default shutdown_grace_s)."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._warm_up is not None:
            self._warm_up.cancel()
        if self._health is not None:
            await self._health.stop()
        stopping = []
        if self._http is not None:
            stopping.append(self._http.stop(grace))
        if self._server is not None:
            stopping.append(self._server.stop(grace))
        await asyncio.gather(*stopping)
        self._server = None
        self._http = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        self.metrics.stop()
        await self.inference.close()
        if self._store is not None:
            await self._store.close()
            self._store = None

    def security_summary(self) -> list[str]:
        """Banner lines: authentication mode and TLS (e.g. "auth: off (...)", "tls: off")."""
        return [
            self.authenticator.summary(),
            listeners.tls_summary(self.settings, self.health_port),
        ]

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve_until_signalled(gateway: Gateway) -> None:
    """Start `gateway`, run until SIGINT/SIGTERM, then stop it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gateway.start()
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await gateway.stop()


SMALL_REQUEST_BYTES = 64 * 1024
"""Requests that carry only names, tokens and flags (Get, List, Delete, prompts, model info)."""


def message_limits(settings: GatewaySettings) -> MessageLimits:
    """The largest message a valid request of each RPC can need, at most CDE_MAX_MESSAGE_BYTES:
    Embed (and each EmbedStream item) holds up to max_texts_per_request texts of
    max_text_bytes; CreateContextSet batches may fill a message."""
    texts = settings.max_texts_per_request * (settings.max_text_bytes + 16) + SMALL_REQUEST_BYTES
    embed = min(texts, settings.max_message_bytes)
    return MessageLimits(
        by_rpc={
            "Embed": embed,
            "EmbedStream": embed,
            "CreateContextSet": settings.max_message_bytes,
        },
        default=min(SMALL_REQUEST_BYTES, settings.max_message_bytes),
    )


def _triton_tls(settings: GatewaySettings) -> TritonTls | None:
    """TLS to Triton when CDE_TRITON_TLS_CA is set."""
    if settings.triton_tls_ca is None:
        return None
    return TritonTls(settings.triton_tls_ca, settings.triton_tls_cert, settings.triton_tls_key)
