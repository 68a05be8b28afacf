"""The HTTP API's FastAPI application: routes, error handlers, the call middleware and an
OpenAPI document whose error answers are the gateway's (400, not FastAPI's 422)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from cde_server.gateway.call_scope import CallScopes
from cde_server.gateway.http import openai_routes, probes, rest_routes
from cde_server.gateway.http.errors import install_error_handlers
from cde_server.gateway.http.middleware import CallMiddleware
from cde_server.gateway.http.services import HttpServices
from cde_server.gateway.service import EmbeddingService

TITLE = "cde-serve"
DESCRIPTION = (
    "Contextual document embeddings over HTTP: an OpenAI-compatible `/v1/embeddings` "
    "(model = `<context set or served model>[@<revision>][:<prompt>]`) and REST for the "
    'native API. Errors use OpenAI\'s shape `{"error": {message, type, param, code}}`.'
)


def create_http_app(
    service: EmbeddingService, calls: CallScopes, serving: Callable[[], bool]
) -> FastAPI:
    """The app over `service` (the same operations as gRPC), admitting calls via `calls`."""
    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        version=_version(),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.services = HttpServices(
        service=service, calls=calls, serving=serving, started_at=int(time.time())
    )
    app.include_router(openai_routes.router)
    app.include_router(rest_routes.router)
    app.include_router(probes.router)
    install_error_handlers(app)
    app.add_middleware(
        CallMiddleware, calls=calls, max_body_bytes=service.settings.max_message_bytes
    )
    _document_errors_as_400(app)
    return app


def _document_errors_as_400(app: FastAPI) -> None:
    """Drop FastAPI's generated 422 answers from the OpenAPI document (we answer 400)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cde-serve")
    except PackageNotFoundError:
        return "0.0.0"
