"""TLS from the gateway to an external Triton: a real tritonserver with mutual TLS on gRPC.

The server demands a client certificate (`--grpc-use-ssl-mutual`); the gateway trusts the
server's self-signed certificate (CDE_TRITON_TLS_CA) and presents its own
(CDE_TRITON_TLS_CERT/KEY). Without the client certificate, or in plaintext, it is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from cde_client import CdeClient, HealthStatus
from cde_server.inference.pool import TritonPool
from cde_server.inference.triton_endpoint import TritonTls
from cde_server.triton.launcher import TritonProcess, TritonStartError
from support.gateway_fixtures import GatewayFactory
from support.tls_certs import Pem, self_signed
from support.triton_fixtures import tiny_triton_settings


class HttpReadyTritonProcess(TritonProcess):
    """Waits for readiness over HTTP: the launcher's own check speaks plaintext gRPC."""

    def wait_ready(self, timeout_s: float) -> None:
        """Block until GET /v2/health/ready answers 200 (server and every model ready)."""
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise TritonStartError(f"tritonserver exited during start-up:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.25)
        raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f} s")


@dataclass(frozen=True)
class TlsTriton:
    url: str
    server: Pem
    client: Pem


@pytest.fixture(scope="module")
def tls_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTriton]:
    folder = tmp_path_factory.mktemp("triton-tls")
    server, client = self_signed(folder, "triton"), self_signed(folder, "gateway")
    settings = tiny_triton_settings(
        tmp_path_factory.mktemp("triton-tls-cache"),
        triton_extra_args=[
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={server.cert}",
            f"--grpc-server-key={server.key}",
            "--grpc-use-ssl-mutual=true",
            f"--grpc-root-cert={client.cert}",
        ],
    )
    with HttpReadyTritonProcess(settings) as process:
        yield TlsTriton(process.grpc_url, server, client)


def test_gateway_embeds_through_mutual_tls(
    tls_triton: TlsTriton, gateway_factory: GatewayFactory, triton_grpc_url: str
) -> None:
    secure = gateway_factory(
        triton_url=tls_triton.url,
        triton_tls_ca=tls_triton.server.cert,
        triton_tls_cert=tls_triton.client.cert,
        triton_tls_key=tls_triton.client.key,
    )
    plain = gateway_factory(triton_url=triton_grpc_url)  # the session's plaintext Triton
    texts = ["who wrote hamlet", "a tiny model"]
    with CdeClient(secure.address, retry=False) as client:
        assert client.health() is HealthStatus.SERVING
        over_tls = client.embed(texts).embeddings
    with CdeClient(plain.address, retry=False) as client:
        reference = client.embed(texts).embeddings
    np.testing.assert_allclose(over_tls, reference, atol=1e-5)


@pytest.mark.parametrize("case", ["no client certificate", "plaintext"])
def test_wrong_tls_setup_is_not_ready(tls_triton: TlsTriton, case: str) -> None:
    tls = TritonTls(tls_triton.server.cert) if case == "no client certificate" else None

    async def scenario() -> bool:
        pool = TritonPool([tls_triton.url], tls=tls, timeout_s=2.0)
        try:
            return await pool.ready(2.0)
        finally:
            await pool.close()

    assert not asyncio.run(scenario())
