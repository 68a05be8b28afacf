"""Errors of the HTTP API in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

The status comes from the gateway's one error mapping (`status.http_status_of`); a rate-limit
answer carries `Retry-After` (whole seconds) and `retry-after-ms`. Request bodies that do not
validate are 400, unknown routes 404; nothing answers with a stack trace.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cde_server.errors import InvalidArgumentError, ResourceExhaustedError, ServiceError
from cde_server.gateway.call_scope import ActiveCall
from cde_server.gateway.http.encoding import json_bytes
from cde_server.gateway.status import http_status_of

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES_OF_HTTP = {
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class FieldError(InvalidArgumentError):
    """INVALID_ARGUMENT about one request field (`param` in the error body)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def error_type(status: int) -> str:
    """OpenAI's error type for an HTTP status."""
    return _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    """The JSON of an error answer."""
    detail = {"message": message, "type": error_type(status), "param": param, "code": code}
    return json_bytes({"error": detail})


def call_of(request: Request) -> ActiveCall | None:
    """The call the middleware opened for `request` (None outside the middleware)."""
    call: Any = getattr(request.state, "call", None)
    return call if isinstance(call, ActiveCall) else None


def service_error_response(exc: BaseException, call: ActiveCall | None) -> Response:
    """The answer to an exception raised while serving (the call's code is set from it)."""
    status, code, message = http_status_of(exc)
    if call is not None:
        call.code = code.name
    headers: dict[str, str] = {}
    if status == 429 and isinstance(exc, ResourceExhaustedError) and exc.retry_after is not None:
        seconds = max(exc.retry_after, 0.001)
        headers["Retry-After"] = str(max(1, math.ceil(seconds)))
        headers["retry-after-ms"] = str(max(1, round(seconds * 1000)))
    param = getattr(exc, "param", None)
    body = error_body(status, message, code.name.lower(), param if isinstance(param, str) else None)
    return Response(body, status, headers=headers, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """ "field: problem" lines of a validation error, and the first field's name."""
    problems = []
    first: str | None = None
    for error in list(exc.errors())[:5]:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        field = ".".join(location) or "body"
        first = first or (location[1] if location and location[0] == "query" else field)
        problems.append(f"{field}: {str(error.get('msg', 'invalid'))[:200]}")
    return "; ".join(problems) or "the request is invalid", first


async def _on_service_error(request: Request, exc: Exception) -> Response:
    return service_error_response(exc, call_of(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    if (call := call_of(request)) is not None:
        call.code = grpc.StatusCode.INVALID_ARGUMENT.name
    return Response(
        error_body(400, message, "invalid_argument", param), 400, media_type="application/json"
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _CODES_OF_HTTP.get(status, grpc.StatusCode.INVALID_ARGUMENT)
    if (call := call_of(request)) is not None:
        call.code = code.name
    if status == 404:
        message = f"no such endpoint: {request.method} {request.url.path[:200]} (see /docs)"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path[:200]} (see /docs)"
    else:
        message = str(exc.detail)[:500]
    headers = dict(exc.headers or {})
    return Response(
        error_body(status, message, code.name.lower()),
        status,
        headers=headers,
        media_type="application/json",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape."""
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)


_DESCRIPTIONS = {
    400: "Invalid request (bad field, limit exceeded, token id outside the vocabulary)",
    401: "Missing or unknown API key",
    403: "The API key may not do this",
    404: "Unknown model, context set, prompt or revision",
    409: "Already exists, or built with another model",
    413: "Request body over CDE_MAX_MESSAGE_BYTES",
    429: "Rate or stream limit (Retry-After says when to retry)",
    500: "Unexpected server failure (the log has the request id)",
    503: "Triton or the store is unavailable",
    504: "The model did not answer in time",
}


def documented_errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error answers every route may give, plus `extra`."""
    from cde_server.gateway.http.schemas import ErrorResponse

    statuses = sorted({400, 401, 413, 429, 500, 503, 504, *extra})
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
