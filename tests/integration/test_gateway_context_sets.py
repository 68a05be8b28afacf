"""Context sets and prompts through the gateway, on SQLite and on Redis, across restarts."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.gateway.wire import matrix_values
from cde_server.stores import open_store
from support.gateway_fixtures import GatewayFactory, GatewayThread

DOCUMENTS = [f"document {i} about topic {i % 3}" for i in range(40)]


def create(
    stub: pb_grpc.EmbeddingServiceStub, name: str, documents: Sequence[str], **options: Any
) -> pb.ContextSet:
    def messages() -> Iterator[pb.CreateContextSetRequest]:
        yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **options))
        for start in range(0, len(documents), 16):
            batch = pb.DocumentBatch(documents=documents[start : start + 16])
            yield pb.CreateContextSetRequest(documents=batch)

    response: pb.CreateContextSetResponse = stub.CreateContextSet(messages())
    return response.context_set


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = info.value.code()
    return code


def test_context_set_lifecycle_and_restart(store_gateway: GatewayThread) -> None:
    with store_gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        n = info.context_size
        created = create(stub, "big", DOCUMENTS)
        assert (created.name, created.revision, created.context_size) == ("big", 1, n)
        assert created.sampling == pb.CONTEXT_SAMPLING_SUBSAMPLED
        assert created.source_document_count == len(DOCUMENTS)
        assert created.compatible and created.model_fingerprint == info.fingerprint
        small = create(stub, "small", DOCUMENTS[:3], prompt="query", seed=7)
        assert small.sampling == pb.CONTEXT_SAMPLING_OVERSAMPLED and small.prompt == "query"
        exact = create(stub, "exact", DOCUMENTS[:n])
        assert exact.sampling == pb.CONTEXT_SAMPLING_EXACT

        assert code_of(lambda: create(stub, "big", DOCUMENTS)) == grpc.StatusCode.ALREADY_EXISTS
        replaced = create(stub, "big", DOCUMENTS[:20], replace=True)
        assert replaced.revision == 2 and replaced.source_document_count == 20

        full = stub.GetContextSet(
            pb.GetContextSetRequest(name="big", include_documents=True, include_embeddings=True)
        )
        assert len(full.documents) == n and set(full.documents) <= set(DOCUMENTS[:20])
        assert full.dataset_embeddings.rows == n
        assert full.dataset_embeddings.dim == info.hidden_size
        bare = stub.GetContextSet(pb.GetContextSetRequest(name="big"))
        assert not bare.documents and bare.dataset_embeddings.rows == 0
        assert bare.context_set.context_id == replaced.context_id

        page1 = stub.ListContextSets(pb.ListContextSetsRequest(page_size=2))
        assert [c.name for c in page1.context_sets] == ["big", "exact"]
        page2 = stub.ListContextSets(
            pb.ListContextSetsRequest(page_size=2, page_token=page1.next_page_token)
        )
        assert [c.name for c in page2.context_sets] == ["small"] and not page2.next_page_token

        prompt = stub.PutPrompt(pb.PutPromptRequest(name="legal", text="legal: ")).prompt
        assert not prompt.builtin
        before = matrix_values(
            stub.Embed(
                pb.EmbedRequest(texts=["a query"], context_set="big", prompt="legal")
            ).embeddings
        ).copy()

    store_gateway.restart()
    with store_gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        names = [c.name for c in stub.ListContextSets(pb.ListContextSetsRequest()).context_sets]
        assert names == ["big", "exact", "small"]
        assert stub.GetContextSet(pb.GetContextSetRequest(name="big")).context_set.revision == 2
        prompts = {p.name: p for p in stub.ListPrompts(pb.ListPromptsRequest()).prompts}
        assert prompts["legal"].text == "legal: " and prompts["query"].builtin
        after = stub.Embed(pb.EmbedRequest(texts=["a query"], context_set="big", prompt="legal"))
        np.testing.assert_allclose(matrix_values(after.embeddings), before, atol=1e-6)

        stub.DeleteContextSet(pb.DeleteContextSetRequest(name="big"))
        stub.DeletePrompt(pb.DeletePromptRequest(name="legal"))
        get_big = pb.GetContextSetRequest(name="big")
        assert code_of(lambda: stub.GetContextSet(get_big)) == grpc.StatusCode.NOT_FOUND
        delete_big = pb.DeleteContextSetRequest(name="big")
        assert code_of(lambda: stub.DeleteContextSet(delete_big)) == grpc.StatusCode.NOT_FOUND
        embed_big = pb.EmbedRequest(texts=["x"], context_set="big")
        assert code_of(lambda: stub.Embed(embed_big)) == grpc.StatusCode.NOT_FOUND


def test_set_from_another_model_is_refused(store_gateway: GatewayThread) -> None:
    with store_gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        create(stub, "mine", DOCUMENTS[:5])

        async def plant_foreign_set() -> None:
            store = await open_store(store_gateway.settings.store)
            try:
                mine = await store.get_context_set("mine", with_documents=True)
                foreign = dataclasses.replace(mine, name="foreign", model_fingerprint="0" * 64)
                await store.create_context_set(foreign, replace=False)
            finally:
                await store.close()

        asyncio.run(plant_foreign_set())
        listed = {c.name: c for c in stub.ListContextSets(pb.ListContextSetsRequest()).context_sets}
        assert listed["mine"].compatible and not listed["foreign"].compatible
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["x"], context_set="foreign"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rebuild it with replace" in info.value.details()
        rebuilt = create(stub, "foreign", DOCUMENTS[:5], replace=True)
        assert rebuilt.compatible and rebuilt.revision == 2
        stub.Embed(pb.EmbedRequest(texts=["x"], context_set="foreign"))


def test_an_oversized_get_is_refused_with_the_real_status(
    gateway_factory: GatewayFactory,
) -> None:
    limit = 1024 * 1024  # the smallest allowed
    gateway = gateway_factory(max_message_bytes=limit, max_text_bytes=64 * 1024)
    document = "a" * 64 * 1024  # stored once per context row: N = 16 copies are over 1 MiB
    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        stub.CreateContextSet(
            iter(
                [
                    pb.CreateContextSetRequest(options=pb.ContextSetOptions(name="big")),
                    pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=[document])),
                ]
            )
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetContextSet(pb.GetContextSetRequest(name="big", include_documents=True))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "raise CDE_MAX_MESSAGE_BYTES" in (refused.value.details() or "")
        described = stub.GetContextSet(pb.GetContextSetRequest(name="big"))
        assert described.context_set.name == "big"
    assert gateway.gateway is not None
    registry = gateway.gateway.metrics.registry
    labels = {"rpc": "GetContextSet", "code": "RESOURCE_EXHAUSTED", "transport": "grpc"}
    assert registry.get_sample_value("cde_gateway_requests_total", labels) == 1
