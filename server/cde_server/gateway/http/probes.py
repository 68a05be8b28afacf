"""Health probes: GET /healthz (the process answers) and GET /readyz (health is SERVING)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from cde_server.gateway.http.encoding import json_bytes
from cde_server.gateway.http.schemas import Probe
from cde_server.gateway.http.services import services_of

router = APIRouter(tags=["Health"])


@router.get("/healthz", response_model=Probe)
async def live() -> Probe:
    """Liveness: 200 while the gateway process serves HTTP."""
    return Probe(status="ok")


@router.get(
    "/readyz",
    response_model=Probe,
    responses={503: {"model": Probe, "description": "Triton or the store is unreachable"}},
)
async def ready(request: Request) -> Response:
    """Readiness: 200 when the gRPC health status is SERVING, else 503."""
    serving = services_of(request).serving()
    body = json_bytes({"status": "SERVING" if serving else "NOT_SERVING"})
    return Response(body, 200 if serving else 503, media_type="application/json")
