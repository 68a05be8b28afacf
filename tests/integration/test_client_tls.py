"""TLS (server and client certificates) and the API key header, against a real gRPC server.

The server is a plain grpc server with the standard health service behind an interceptor
that demands `authorization: Bearer <key>`, so these tests do not wait for the gateway's
own TLS and key support (issue 7) and check exactly what the client sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cde_client import AsyncCdeClient, CdeClient, HealthStatus, Unauthenticated, Unavailable
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.client_fixtures import run_async
from support.tls_certs import Pem, self_signed

API_KEY = "test-key-123"


class RequireApiKey(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without the expected bearer token."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        if ("authorization", f"Bearer {API_KEY}") in handler_call_details.invocation_metadata:
            return continuation(handler_call_details)

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")

        return grpc.unary_unary_rpc_method_handler(refuse)


@dataclass(frozen=True)
class TlsServer:
    address: str
    server_pem: Pem
    client_pem: Pem
    other_pem: Pem


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    server_pem, client_pem, other_pem = (
        self_signed(folder, name) for name in ("server", "client", "other")
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[RequireApiKey()])
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(server_pem.key.read_bytes(), server_pem.cert.read_bytes())],
        root_certificates=client_pem.cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield TlsServer(f"localhost:{port}", server_pem, client_pem, other_pem)
    finally:
        server.stop(0)


def test_tls_with_client_certificate_and_api_key(tls_server: TlsServer) -> None:
    options: dict[str, Any] = {
        "root_certificates": tls_server.server_pem.cert,
        "client_certificate": tls_server.client_pem.cert,
        "client_key": tls_server.client_pem.key.read_bytes(),
        "api_key": API_KEY,
    }
    with CdeClient(tls_server.address, **options) as client:
        assert client.health() is HealthStatus.SERVING

    async def scenario() -> HealthStatus:
        async with AsyncCdeClient(tls_server.address, **options) as client:
            return await client.health()

    assert run_async(scenario()) is HealthStatus.SERVING


def test_api_key_from_the_environment(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDE_API_KEY", API_KEY)
    with CdeClient(
        tls_server.address,
        root_certificates=tls_server.server_pem.cert.read_text(),  # PEM text works too
        client_certificate=tls_server.client_pem.cert,
        client_key=tls_server.client_pem.key,
    ) as client:
        assert client.health() is HealthStatus.SERVING


def test_missing_api_key_is_unauthenticated(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDE_API_KEY", raising=False)
    with (
        CdeClient(
            tls_server.address,
            root_certificates=tls_server.server_pem.cert,
            client_certificate=tls_server.client_pem.cert,
            client_key=tls_server.client_pem.key,
        ) as client,
        pytest.raises(Unauthenticated, match="API key"),
    ):
        client.health()


@pytest.mark.parametrize("case", ["untrusted server", "no client certificate", "plaintext"])
def test_bad_tls_setups_are_unavailable(tls_server: TlsServer, case: str) -> None:
    options: dict[str, Any] = {
        "root_certificates": tls_server.server_pem.cert,
        "client_certificate": tls_server.client_pem.cert,
        "client_key": tls_server.client_pem.key,
    }
    if case == "untrusted server":
        options["root_certificates"] = tls_server.other_pem.cert
    elif case == "no client certificate":
        del options["client_certificate"], options["client_key"]
    else:
        options = {}
    with (
        CdeClient(
            tls_server.address, api_key=API_KEY, retry=False, timeout=10, **options
        ) as client,
        pytest.raises(Unavailable),
    ):
        client.health()


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="go together"):
        CdeClient("localhost:1", client_certificate=b"pem")
