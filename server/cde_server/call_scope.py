"""What happens around every RPC: request id in and out, deadline, status mapping, metrics, log.

Handlers run their work inside `async with scopes.open(rpc, context) as call:`; a domain error
raised there becomes the call's gRPC status (via `status.status_of`), and the call is counted
and logged once, with its request id, code and duration.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field
from types import TracebackType

import grpc

from cde_server.metrics import GatewayMetrics
from cde_server.request_log import REQUEST_ID_HEADER, current_request_id, request_id_from
from cde_server.status import status_of

logger = logging.getLogger("cde_server.calls")
_SERVER_FAULTS = frozenset({"INTERNAL", "UNAVAILABLE", "UNKNOWN", "DATA_LOSS"})


@dataclass
class Call:
    """One RPC in progress."""

    rpc: str
    request_id: str
    context: grpc.aio.ServicerContext
    started: float = field(default_factory=time.perf_counter)
    code: str = "OK"

    def timeout_s(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        remaining = self.context.time_remaining()
        return None if remaining is None else max(float(remaining), 0.0)


class CallScope:
    """Async context manager around one RPC; yields its `Call`. Never swallows an error: a
    domain error becomes `context.abort(code, message)` (which raises AbortError)."""

    def __init__(self, scopes: CallScopes, rpc: str, context: grpc.aio.ServicerContext) -> None:
        self._scopes = scopes
        self._call = Call(rpc, request_id_from(context.invocation_metadata()), context)
        self._token: contextvars.Token[str | None] | None = None

    async def __aenter__(self) -> Call:
        self._token = current_request_id.set(self._call.request_id)
        self._call.context.set_trailing_metadata(((REQUEST_ID_HEADER, self._call.request_id),))
        return self._call

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
                await call.context.abort(code, message)
        finally:
            self._scopes.finish(call)
            if self._token is not None:
                current_request_id.reset(self._token)


class CallScopes:
    """Opens a scope per RPC; owns the per-call metrics and access log."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def open(self, rpc: str, context: grpc.aio.ServicerContext) -> CallScope:
        """`async with scopes.open("Embed", context) as call:` around the RPC's work."""
        return CallScope(self, rpc, context)

    def item_done(self, rpc: str, code: str, started: float) -> None:
        """Count one item of a stream (no log line: the stream logs once)."""
        self._metrics.request_done(rpc, code, time.perf_counter() - started)

    def finish(self, call: Call) -> None:
        """Count and log a finished call."""
        seconds = time.perf_counter() - call.started
        self._metrics.request_done(call.rpc, call.code, seconds)
        level = logging.WARNING if call.code in _SERVER_FAULTS else logging.INFO
        logger.log(
            level,
            "%s %s",
            call.rpc,
            call.code,
            extra={"rpc": call.rpc, "code": call.code, "duration_ms": round(seconds * 1000, 2)},
        )
