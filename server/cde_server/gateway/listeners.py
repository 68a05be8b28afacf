"""The gateway's ports: the API port (plaintext, TLS, or TLS with client certificates) and the
optional plaintext port that serves only grpc.health.v1 (`CDE_HEALTH_PORT`, for probes that
cannot speak TLS).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from cde_server.gateway.decoding import DecodeGuard
from cde_server.gateway.settings import GatewaySettings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def server_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """TLS credentials of the API port (None: plaintext)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key = _read(settings.tls_key, "CDE_TLS_KEY")
    chain = _read(settings.tls_cert, "CDE_TLS_CERT")
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = _read(settings.tls_client_ca, "CDE_TLS_CLIENT_CA")
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def bind_api_port(server: grpc.aio.Server, settings: GatewaySettings) -> int:
    """Bind the API port (TLS when configured); returns the bound port."""
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.address)
    else:
        port = server.add_secure_port(settings.address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address}")
    return int(port)


async def start_health_server(
    settings: GatewaySettings, servicer: health_pb2_grpc.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with only the health service on CDE_HEALTH_PORT; (server, port)."""
    assert settings.health_port is not None
    server = grpc.aio.server(interceptors=[DecodeGuard()], options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{settings.host}:{settings.health_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address} (CDE_HEALTH_PORT)")
    await server.start()
    return server, int(port)


def tls_summary(settings: GatewaySettings, health_port: int | None) -> str:
    """One line for the start-up banner (`health_port`: the bound health-only port)."""
    if settings.tls_cert is None:
        tls = "tls: off"
    elif settings.tls_client_ca is None:
        tls = "tls: on"
    else:
        tls = "tls: on, client certificates required"
    if health_port is not None:
        tls += f"; health-only plaintext port {health_port}"
    return tls
