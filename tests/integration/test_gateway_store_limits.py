"""Per-tenant quotas, idempotent creates and the compact store on a real stack (gateway in
front of the session's Triton, SQLite and Redis stores)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_client import AsyncCdeClient, CdeClient, FailedPrecondition, ResourceExhausted
from cde_server.stores import open_store
from support.answer_dropper import AnswerDropper
from support.client_fixtures import run_async
from support.gateway_fixtures import GatewayFactory, GatewayThread
from support.store_records import run

from integration import test_bad_input as bad_input
from integration.conftest import http_url

DOCS = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for apple pie"]


def create(
    stub: pb_grpc.EmbeddingServiceStub, name: str, docs: list[str], **options: object
) -> pb.ContextSet:
    return bad_input.create(stub, name, docs, **options).context_set


def sample_value(gateway: GatewayThread, metric: str, **labels: str) -> float:
    """The current value of one sample of the gateway's metrics."""
    assert gateway.gateway is not None
    for family in gateway.gateway.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.fixture
def stub_of() -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def make(gateway: GatewayThread) -> pb_grpc.EmbeddingServiceStub:
        channels.append(gateway.channel())
        return pb_grpc.EmbeddingServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


def test_context_set_quota_over_grpc_and_http(
    store_url: str, gateway_factory: GatewayFactory, unique: str
) -> None:
    gateway = gateway_factory(store_url, max_context_sets_per_tenant=2)
    with CdeClient(gateway.address) as client:
        client.create_context_set(f"{unique}-a", DOCS)
        client.create_context_set(f"{unique}-b", DOCS)
        with pytest.raises(ResourceExhausted) as refused:
            client.create_context_set(f"{unique}-c", DOCS)
        assert "this tenant has 2 context sets and its limit is 2" in refused.value.message
        assert "retrying will not help" in refused.value.message
        assert refused.value.retry_after is None
        assert client.create_context_set(f"{unique}-a", DOCS[:2], replace=True).revision == 2
        with httpx.Client(base_url=http_url(gateway), timeout=60) as http:
            answer = http.post("/v1/context-sets", json={"name": f"{unique}-d", "documents": DOCS})
            assert answer.status_code == 429, answer.text
            assert "Retry-After" not in answer.headers
            assert "its limit is 2" in answer.json()["error"]["message"]
        assert [s.name for s in client.list_context_sets()] == [f"{unique}-a", f"{unique}-b"]
        assert sample_value(gateway, "cde_gateway_quota_refusals_total", quota="context_sets") == 2
        client.delete_context_set(f"{unique}-b")
        client.create_context_set(f"{unique}-c", DOCS)
    assert sample_value(gateway, "cde_gateway_tenant_context_sets", tenant="") == 2


def test_stored_bytes_quota_and_usage_gauge(
    store_url: str, gateway_factory: GatewayFactory, unique: str
) -> None:
    gateway = gateway_factory(store_url)
    with CdeClient(gateway.address) as client:
        client.create_context_set(f"{unique}-a", DOCS)
    one_set = sample_value(gateway, "cde_gateway_tenant_stored_bytes", tenant="")
    assert one_set > 0
    gateway.restart(max_stored_bytes_per_tenant=int(one_set * 1.5))
    with CdeClient(gateway.address) as client:
        with pytest.raises(ResourceExhausted) as refused:
            client.create_context_set(f"{unique}-b", DOCS)
        message = refused.value.message
        assert f"this tenant's context sets use {int(one_set)} bytes" in message
        assert f"over its limit of {int(one_set * 1.5)} stored bytes" in message
        client.delete_context_set(f"{unique}-a")
        client.create_context_set(f"{unique}-b", DOCS)
    assert sample_value(gateway, "cde_gateway_quota_refusals_total", quota="stored_bytes") == 1


def test_a_create_repeated_with_its_key_yields_one_revision(
    store_url: str, gateway_factory: GatewayFactory, unique: str, stub_of: object
) -> None:
    gateway = gateway_factory(store_url)
    stub = stub_of(gateway)  # type: ignore[operator]
    first = create(stub, unique, DOCS, idempotency_key="key-1")
    again = create(stub, unique, DOCS, idempotency_key="key-1")  # replace=False: no conflict
    assert (first.revision, again.revision) == (1, 1) and again.context_id == first.context_id
    second = create(stub, unique, DOCS[:2], replace=True, idempotency_key="key-2")
    retried = create(stub, unique, DOCS[:2], replace=True, idempotency_key="key-2")
    assert (second.revision, retried.revision) == (2, 2) and retried.active_revision == 2
    with pytest.raises(grpc.RpcError) as mismatch:
        create(stub, unique, DOCS[:1], replace=True, idempotency_key="key-2")
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert mismatch.value.details() == (
        f'idempotency key "key-2" was already used for a different create of context set '
        f'"{unique}" (revision 2); use a new key for a new create'
    )
    with pytest.raises(grpc.RpcError) as invalid:
        create(stub, unique, DOCS, replace=True, idempotency_key="two words")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid idempotency key 'two words'" in (invalid.value.details() or "")
    with httpx.Client(base_url=http_url(gateway), timeout=60) as http:
        body = {"name": unique, "documents": ["x", "y"], "replace": True}
        headers = {"Idempotency-Key": "http-1"}
        posted = [http.post("/v1/context-sets", json=body, headers=headers) for _ in range(2)]
        assert [p.status_code for p in posted] == [201, 201]
        assert [p.json()["revision"] for p in posted] == [3, 3]
        ndjson = "\n".join(json.dumps(d) for d in ["x", "y", "z"])
        url = f"/v1/context-sets/{unique}/documents?replace=true"
        other = http.post(
            url, content=ndjson, headers={**headers, "Content-Type": "application/x-ndjson"}
        )
        assert other.status_code == 409 and "already used" in other.text
    with CdeClient(gateway.address) as client:
        history = client.get_context_set(unique).revisions
        assert [r.revision for r in history] == [1, 2, 3]
        with pytest.raises(FailedPrecondition):
            client.create_context_set(unique, ["other"], replace=True, idempotency_key="key-1")


def test_client_retries_a_create_whose_answer_was_lost(
    store_url: str, gateway_factory: GatewayFactory, unique: str
) -> None:
    gateway = gateway_factory(store_url)
    proxy = AnswerDropper(gateway.address)
    try:
        with CdeClient(proxy.address) as client:
            client.model_info()
            proxy.armed.set()
            created = client.create_context_set(unique, iter(DOCS))  # read once, resent
            assert proxy.dropped.is_set(), "the proxy lost no answer"
            assert created.revision == 1
            proxy.armed.set()
            replaced = client.create_context_set(unique, DOCS[:2], replace=True)
            assert proxy.dropped.is_set() and replaced.revision == 2
            history = client.get_context_set(unique).revisions
            assert [r.revision for r in history] == [1, 2]

        async def asynchronous() -> int:
            async def documents() -> object:
                for document in DOCS:
                    yield document

            async with AsyncCdeClient(proxy.address) as client:
                await client.model_info()
                proxy.dropped.clear()
                proxy.armed.set()
                made = await client.create_context_set(unique, documents(), replace=True)  # type: ignore[arg-type]
                assert proxy.dropped.is_set()
                history = (await client.get_context_set(unique)).revisions
                assert [r.revision for r in history] == [1, 2, 3]
                return made.revision

        assert run_async(asynchronous()) == 3
    finally:
        proxy.close()


def test_an_oversampled_set_is_stored_compactly(
    store_url: str, gateway_factory: GatewayFactory, unique: str
) -> None:
    """Stored bytes per context set before (N copies) and after (distinct documents and rows
    once, plus the sample's indices), for the test model from a three-document source."""
    gateway = gateway_factory(store_url)
    with CdeClient(gateway.address) as client:
        created = client.create_context_set(unique, DOCS)
        full = client.get_context_set(unique, include_documents=True)
        embeddings = client.get_context_set(unique, include_embeddings=True).dataset_embeddings
    assert embeddings is not None
    n, dim = embeddings.shape
    assert created.sampling == "oversampled" and full.context_size == n > len(DOCS)
    assert full.documents is not None
    before = n * dim * 4 + len(json.dumps(list(full.documents), ensure_ascii=False).encode())
    stored = run(_usage(store_url))
    distinct_rows = len({row.tobytes() for row in embeddings})
    after = distinct_rows * dim * 4 + len(json.dumps(DOCS).encode()) + 4 * 2 * n
    print(f"\nN={n}, dim={dim}: stored bytes per context set {before} before, {stored} after")
    assert distinct_rows == len(DOCS)
    assert stored == after and stored * 2 < before


async def _usage(url: str) -> int:
    store = await open_store(url)
    try:
        return (await store.usage("")).stored_bytes
    finally:
        await store.close()
