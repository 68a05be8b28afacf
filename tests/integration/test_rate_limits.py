"""Per-tenant rate and stream limits: RESOURCE_EXHAUSTED with a retry hint the client reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_client import CdeClient, ResourceExhausted
from cde_server.errors import ResourceExhaustedError
from cde_server.gateway.auth import generate_key, hash_key, key_entry_toml
from cde_server.gateway.limits import Limits, TenantLimiter
from support.gateway_fixtures import GatewayFactory, GatewayThread


def client(gateway: GatewayThread, key: str = "") -> CdeClient:
    return CdeClient(gateway.address, api_key=key, timeout=30)


def rejections(gateway: GatewayThread, reason: str) -> float:
    assert gateway.gateway is not None
    value = gateway.gateway.metrics.registry.get_sample_value(
        "cde_gateway_rejections_total", {"reason": reason}
    )
    return value or 0.0


def test_token_bucket_refills_at_the_rate() -> None:
    now = [100.0]
    limiter = TenantLimiter(lambda tenant: Limits(rate_rps=2.0, burst=3), clock=lambda: now[0])
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(ResourceExhaustedError) as error:
        limiter.admit("a")
    assert error.value.retry_after == pytest.approx(0.5)
    limiter.admit("b")  # tenants have their own buckets
    now[0] += 0.25
    with pytest.raises(ResourceExhaustedError) as error:
        limiter.admit("a")
    assert error.value.retry_after == pytest.approx(0.25)
    now[0] += 0.25
    limiter.admit("a")
    now[0] += 60  # a long pause refills only up to the burst
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(ResourceExhaustedError):
        limiter.admit("a")


def test_rate_limit_answers_resource_exhausted_with_retry_after(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(rate_limit_rps=0.5, rate_limit_burst=2)
    with client(gateway) as anybody:
        anybody.list_prompts()
        anybody.list_prompts()
        with pytest.raises(ResourceExhausted, match=r"rate limit of 0\.5 calls/s") as error:
            anybody.list_prompts()
    assert error.value.retry_after is not None and 1.0 < error.value.retry_after <= 2.0
    assert rejections(gateway, "rate_limit") == 1


def tenant_keys(folder: Path, acme_limits: str) -> tuple[Path, str, str]:
    """Keys of tenants acme (its own limits, a [tenants.acme] body) and beta (the server's)."""
    acme, beta = generate_key(), generate_key()
    path = folder / "keys.toml"
    path.write_text(
        key_entry_toml("acme", hash_key(acme))
        + key_entry_toml("beta", hash_key(beta))
        + f"[tenants.acme]\n{acme_limits}\n"
    )
    return path, acme, beta


def test_limits_are_per_tenant_and_overridable(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    path, acme_key, beta_key = tenant_keys(tmp_path, "rate_limit_rps = 0.1\nrate_limit_burst = 1")
    gateway = gateway_factory(api_keys_file=path)
    with client(gateway, acme_key) as acme, client(gateway, beta_key) as beta:
        acme.list_prompts()
        with pytest.raises(ResourceExhausted, match='tenant "acme"') as error:
            acme.list_prompts()
        assert error.value.retry_after is not None and error.value.retry_after > 5
        for _ in range(5):
            beta.list_prompts()  # no server-wide rate limit: beta is unaffected


def test_streams_per_tenant(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    path, acme_key, beta_key = tenant_keys(tmp_path, "max_streams = 1")
    gateway = gateway_factory(api_keys_file=path, max_streams_per_tenant=2)
    release = threading.Event()

    def held_open() -> Iterator[pb.EmbedStreamRequest]:
        yield pb.EmbedStreamRequest(request=pb.EmbedRequest(texts=["held"]))
        release.wait(30)

    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        metadata = [("authorization", f"Bearer {acme_key}")]
        first = stub.EmbedStream(held_open(), metadata=metadata, timeout=60)
        try:
            assert next(first).HasField("response")  # acme's one stream is open
            with client(gateway, acme_key) as acme:
                with pytest.raises(ResourceExhausted, match="streams open") as error:
                    list(acme.embed_stream([["second"]]))
                assert error.value.retry_after == 1.0
            with client(gateway, beta_key) as beta:  # beta: the server's limit of 2
                results = list(beta.embed_stream([["one"], ["two"]]))
                assert [r.embeddings.shape[0] for r in results] == [1, 1]
        finally:
            release.set()
            list(first)
    assert rejections(gateway, "tenant_streams") == 1
