"""What the HTTP routes reach through the app: the operations, the call scopes, readiness; and
the dependency that admits a call (API key → tenant, rate limit) before its body is used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cde_server.gateway.call_scope import ActiveCall, CallScopes
from cde_server.gateway.http.errors import call_of
from cde_server.gateway.request_log import request_id_from
from cde_server.gateway.service import EmbeddingService


@dataclass(frozen=True)
class HttpServices:
    """The gateway as the HTTP routes see it."""

    service: EmbeddingService
    calls: CallScopes
    serving: Callable[[], bool]
    """Whether the gateway's health status is SERVING."""
    started_at: int
    """Unix time the gateway started (the served model's `created` in /v1/models)."""


def services_of(request: Request) -> HttpServices:
    """The services the app was made with."""
    services: Any = request.app.state.services
    assert isinstance(services, HttpServices)
    return services


_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <API key>` when the gateway has API keys (CDE_API_KEYS*)",
)


def admitted(rpc: str) -> Any:
    """A route parameter default: the route's admitted `ActiveCall` named `rpc`."""

    async def admit(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    ) -> ActiveCall:
        call = call_of(request)
        if call is None:  # not behind CallMiddleware
            call = ActiveCall(rpc, request_id_from(request.headers.items()), transport="http")
            request.state.call = call
        call.rpc = rpc
        peer = f"ipv4:{request.client.host}:{request.client.port}" if request.client else ""
        services_of(request).calls.admit(call, request.headers.items(), peer)
        return call

    dependency: Callable[..., Awaitable[ActiveCall]] = admit
    return Depends(dependency)
