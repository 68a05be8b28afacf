"""Around every HTTP request: its `ActiveCall` (request id in and out), the body size limit,
the last-resort error answer, and the call's metrics and log line once it is answered."""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cde_server.errors import MessageTooLargeError
from cde_server.gateway.call_scope import ActiveCall, CallScopes
from cde_server.gateway.http.errors import service_error_response
from cde_server.gateway.request_log import REQUEST_ID_HEADER, current_request_id, request_id_from

logger = logging.getLogger("cde_server.gateway.http")
UNROUTED = "HttpUnrouted"
"""The rpc label of requests no route took (unknown paths, documentation, probes)."""


def _too_large(limit: int) -> MessageTooLargeError:
    return MessageTooLargeError(f"the request body is larger than the limit of {limit} bytes")


class CallMiddleware:
    """Pure ASGI middleware (so the request's context variables reach the route)."""

    def __init__(self, app: ASGIApp, *, calls: CallScopes, max_body_bytes: int) -> None:
        self.app = app
        self._calls = calls
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        call = ActiveCall(UNROUTED, request_id_from(headers.items()), transport="http")
        scope.setdefault("state", {})["call"] = call
        token = current_request_id.set(call.request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                raw.append((REQUEST_ID_HEADER.encode(), call.request_id.encode()))
                message = {**message, "headers": raw}
                if message["status"] >= 400 and call.code == "OK":
                    call.code = "UNKNOWN"
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_body_bytes:
                await self._answer_error(_too_large(self._max_body_bytes), call, send_with_id)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except Exception as exc:  # the last resort: an error answer, never a stack trace
            if started:
                logger.error("error after the response started: %s", exc, exc_info=exc)
            else:
                await self._answer_error(exc, call, send_with_id)
        finally:
            if call.rpc != UNROUTED or call.code != "OK":
                self._calls.finish(call)
            current_request_id.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that raises MessageTooLargeError once the body passes the limit."""
        limit = self._max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        return receive_limited

    @staticmethod
    async def _answer_error(exc: BaseException, call: ActiveCall, send: Send) -> None:
        response: Any = service_error_response(exc, call)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
