"""Prometheus metrics of the gateway and their HTTP `/metrics` endpoint.

Each `GatewayMetrics` owns its registry, so several gateways can live in one process (tests).
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class GatewayMetrics:
    """Requests by RPC and status, latencies, texts and tokens, Triton cache and errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cde_gateway_requests",
            "Finished calls (EmbedStream items count under rpc=EmbedStreamItem) by status code "
            "and transport (grpc, http)",
            ["rpc", "code", "transport"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cde_gateway_request_duration_seconds",
            "Call latency in seconds, by RPC and transport (grpc, http)",
            ["rpc", "transport"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter(
            "cde_gateway_texts", "Texts embedded, by stage", ["stage"], registry=self.registry
        )
        self.tokens = Counter(
            "cde_gateway_tokens",
            "Tokens embedded (after prefix and truncation), by stage",
            ["stage"],
            registry=self.registry,
        )
        self.cache = Counter(
            "cde_gateway_context_cache",
            "Triton context-cache lookups by result (hit/miss)",
            ["result"],
            registry=self.registry,
        )
        self.triton_latency = Histogram(
            "cde_gateway_triton_request_duration_seconds",
            "Triton inference call latency in seconds, by model",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.triton_errors = Counter(
            "cde_gateway_triton_errors",
            "Failed Triton calls by model and status (cache misses excluded)",
            ["model", "code"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "cde_gateway_open_streams", "Streaming RPCs in progress", registry=self.registry
        )
        self.triton_endpoint_up = Gauge(
            "cde_gateway_triton_endpoint_up",
            "1 while a Triton endpoint takes requests, 0 while it is marked down",
            ["endpoint"],
            registry=self.registry,
        )
        self.triton_endpoint_outstanding = Gauge(
            "cde_gateway_triton_endpoint_outstanding",
            "Backend calls in flight on a Triton endpoint",
            ["endpoint"],
            registry=self.registry,
        )
        self.triton_endpoint_calls = Counter(
            "cde_gateway_triton_endpoint_calls",
            "Backend calls by Triton endpoint and result (ok, unavailable: retried elsewhere, "
            "busy: its queue was full, tried elsewhere, error)",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "cde_gateway_rejections",
            "Calls refused before their work, by reason (unauthenticated, permission_denied, "
            "rate_limit, tenant_streams, streams)",
            ["reason"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "cde_gateway_quota_refusals",
            "Context-set creates refused by a tenant quota (context_sets, stored_bytes)",
            ["quota"],
            registry=self.registry,
        )
        self.tenant_context_sets = Gauge(
            "cde_gateway_tenant_context_sets",
            "Context sets a tenant holds (updated when it creates or deletes one)",
            ["tenant"],
            registry=self.registry,
        )
        self.tenant_stored_bytes = Gauge(
            "cde_gateway_tenant_stored_bytes",
            "Bytes of a tenant's retained context-set revisions, as its quota counts them "
            "(updated when it creates or deletes one)",
            ["tenant"],
            registry=self.registry,
        )
        self.healthy = Gauge(
            "cde_gateway_serving",
            "1 when the store and at least one Triton endpoint are reachable",
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- InferenceObserver -----------------------------------------------------------------------
    def triton_call(self, model: str, seconds: float, code: str) -> None:
        """Record one Triton inference call."""
        self.triton_latency.labels(model).observe(seconds)
        if code not in ("OK", "CONTEXT_NOT_CACHED"):
            self.triton_errors.labels(model, code).inc()

    def context_cache(self, hit: bool) -> None:
        """Record one context-cache lookup in Triton."""
        self.cache.labels("hit" if hit else "miss").inc()

    # --- PoolObserver ---------------------------------------------------------------------------
    def endpoint_up(self, endpoint: str, up: bool) -> None:
        """Record that a Triton endpoint was marked up or down."""
        self.triton_endpoint_up.labels(endpoint).set(1 if up else 0)

    def endpoint_outstanding(self, endpoint: str, count: int) -> None:
        """Record the backend calls in flight on a Triton endpoint."""
        self.triton_endpoint_outstanding.labels(endpoint).set(count)

    def endpoint_call(self, endpoint: str, result: str) -> None:
        """Record one finished backend call on a Triton endpoint."""
        self.triton_endpoint_calls.labels(endpoint, result).inc()

    # --- gateway ------------------------------------------------------------------------------
    def request_done(self, rpc: str, code: str, seconds: float, transport: str = "grpc") -> None:
        """Record one finished call."""
        self.requests.labels(rpc, code, transport).inc()
        self.latency.labels(rpc, transport).observe(seconds)

    def embedded(self, stage: str, texts: int, tokens: int) -> None:
        """Record texts and tokens sent through a stage ("first" or "second")."""
        self.texts.labels(stage).inc(texts)
        self.tokens.labels(stage).inc(tokens)

    def tenant_usage(self, tenant: str, context_sets: int, stored_bytes: int) -> None:
        """Record what a tenant holds in the store."""
        self.tenant_context_sets.labels(tenant).set(context_sets)
        self.tenant_stored_bytes.labels(tenant).set(stored_bytes)

    # --- HTTP endpoint ------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP server if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
