"""What happens around every call, whatever its transport: request id in and out, API key and
rate limit, deadline, status mapping, metrics, log.

`CallScopes` holds the transport-neutral parts: `admit` (API key → tenant, rate limit, counted
rejections) and `finish` (metrics with a `transport` label, one JSON log line with request id,
tenant, code and duration). gRPC handlers run their work inside
`async with scopes.open(rpc, context) as call:` (`CallScope`); a domain error raised there
becomes the call's gRPC status (via `status.status_of`, with a `retry-after` trailer when the
error has a hint). The HTTP API (`gateway.http`) uses the same `admit` and `finish`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from cde_server.errors import ResourceExhaustedError, UnauthenticatedError
from cde_server.gateway.auth import Authenticator
from cde_server.gateway.limits import FailedAuthThrottle, Limits, TenantLimiter
from cde_server.gateway.metrics import GatewayMetrics
from cde_server.gateway.request_log import REQUEST_ID_HEADER, current_request_id, request_id_from
from cde_server.gateway.status import status_of

logger = logging.getLogger("cde_server.calls")
_SERVER_FAULTS = frozenset({"INTERNAL", "UNAVAILABLE", "UNKNOWN", "DATA_LOSS"})
RETRY_AFTER_HEADER = "retry-after"


@dataclass
class ActiveCall:
    """One call in progress, whatever its transport: who calls, and by when."""

    rpc: str
    request_id: str
    deadline: float | None = None
    """time.monotonic() by which the caller wants the answer (None: no deadline)."""
    started: float = field(default_factory=time.perf_counter)
    code: str = "OK"
    tenant: str = ""
    """The caller's tenant ("" when authentication is off): every store access is scoped to it."""
    admin: bool = False
    transport: str = "grpc"
    """"grpc" or "http": a label of the call's metrics and a field of its log line."""
    log_fields: dict[str, object] = field(default_factory=dict)
    """Extra fields for the call's log line (e.g. the OpenAI `user`)."""

    def timeout_s(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)


class CallScope:
    """Async context manager around one RPC; yields its `ActiveCall`. Never swallows an error: a
    domain error becomes `context.abort(code, message)` (which raises AbortError)."""

    def __init__(self, scopes: CallScopes, rpc: str, rpc_context: grpc.aio.ServicerContext) -> None:
        self._scopes = scopes
        self._rpc_context = rpc_context
        remaining = rpc_context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + float(remaining)
        self._call = ActiveCall(
            rpc, request_id_from(rpc_context.invocation_metadata()), deadline=deadline
        )
        self._token: contextvars.Token[str | None] | None = None

    async def __aenter__(self) -> ActiveCall:
        call = self._call
        self._token = current_request_id.set(call.request_id)
        self._rpc_context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        try:
            self._scopes.admit(
                call, self._rpc_context.invocation_metadata(), str(self._rpc_context.peer() or "")
            )
        except (UnauthenticatedError, ResourceExhaustedError) as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)  # aborts: raises AbortError
            raise  # not reached
        return call

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        call = self._call
        try:
            if isinstance(exc, asyncio.CancelledError):
                call.code = "CANCELLED"
            elif isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
                code, message = status_of(exc)
                call.code = code.name
                if isinstance(exc, ResourceExhaustedError) and exc.retry_after is not None:
                    self._rpc_context.set_trailing_metadata(
                        (
                            (REQUEST_ID_HEADER, call.request_id),
                            (RETRY_AFTER_HEADER, f"{max(exc.retry_after, 0.001):.3f}"),
                        )
                    )
                await self._rpc_context.abort(code, message)
        finally:
            self._scopes.finish(call)
            if self._token is not None:
                current_request_id.reset(self._token)


class CallScopes:
    """Opens a scope per RPC; owns authentication, rate limits, per-call metrics and log."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        authenticator: Authenticator | None = None,
        limiter: TenantLimiter | None = None,
    ) -> None:
        self._metrics = metrics
        self.authenticator = authenticator or Authenticator(None)
        self.limiter = limiter or TenantLimiter(lambda _tenant: Limits())
        self.auth_throttle = FailedAuthThrottle()

    def admit(
        self, call: ActiveCall, metadata: Iterable[tuple[str, Any]] | None, peer: str = ""
    ) -> None:
        """Authenticate the caller from `metadata` (gRPC metadata or HTTP headers) and take a
        token of its tenant's rate limit; a refusal is counted and raised
        (UnauthenticatedError, ResourceExhaustedError). An address (`peer`) that keeps failing
        authentication is refused for a while (FailedAuthThrottle)."""
        try:
            self.auth_throttle.check(peer)
        except ResourceExhaustedError:
            self.rejected("auth_throttle")
            raise
        try:
            principal = self.authenticator.authenticate(metadata)
            call.tenant, call.admin = principal.tenant, principal.admin
            self.limiter.admit(call.tenant)
        except UnauthenticatedError:
            self.auth_throttle.failed(peer)
            self.rejected("unauthenticated")
            raise
        except ResourceExhaustedError:
            self.rejected("rate_limit")
            raise

    def rejected(self, reason: str) -> None:
        """Count a call refused before its work (unauthenticated, rate or stream limit)."""
        self._metrics.rejections.labels(reason).inc()

    def open(self, rpc: str, rpc_context: grpc.aio.ServicerContext) -> CallScope:
        """`async with scopes.open("Embed", rpc_context) as call:` around the RPC's work."""
        return CallScope(self, rpc, rpc_context)

    def item_done(self, rpc: str, code: str, started: float, transport: str = "grpc") -> None:
        """Count one item of a stream (no log line: the stream logs once)."""
        self._metrics.request_done(rpc, code, time.perf_counter() - started, transport)

    def finish(self, call: ActiveCall) -> None:
        """Count and log a finished call."""
        seconds = time.perf_counter() - call.started
        self._metrics.request_done(call.rpc, call.code, seconds, call.transport)
        level = logging.WARNING if call.code in _SERVER_FAULTS else logging.INFO
        logger.log(
            level,
            "%s %s",
            call.rpc,
            call.code,
            extra={
                **call.log_fields,
                "rpc": call.rpc,
                "code": call.code,
                "tenant": call.tenant,
                "transport": call.transport,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
