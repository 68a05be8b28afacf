"""Context-set revisions through the gateway (SQLite and Redis): pinning with name@N,
inactive builds, activation that restores the old embeddings exactly, pruning, deletes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.gateway.wire import matrix_values
from support.gateway_fixtures import GatewayFactory, GatewayThread

DOCUMENTS = [f"document {i} about topic {i % 3}" for i in range(40)]
QUERIES = ["what is topic 1?", "tell me about document 7"]


def create(
    stub: pb_grpc.EmbeddingServiceStub, name: str, documents: Sequence[str], **options: Any
) -> pb.ContextSet:
    """CreateContextSet: options, then the documents in batches of 16."""

    def messages() -> Iterator[pb.CreateContextSetRequest]:
        yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **options))
        for start in range(0, len(documents), 16):
            batch = pb.DocumentBatch(documents=documents[start : start + 16])
            yield pb.CreateContextSetRequest(documents=batch)

    response: pb.CreateContextSetResponse = stub.CreateContextSet(messages())
    return response.context_set


def embed(
    stub: pb_grpc.EmbeddingServiceStub, context_set: str
) -> tuple[int, npt.NDArray[np.float32]]:
    response = stub.Embed(pb.EmbedRequest(texts=QUERIES, prompt="query", context_set=context_set))
    return response.context_revision, matrix_values(response.embeddings).copy()


def refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_build_beside_re_embed_pinned_then_activate(store_gateway: GatewayThread) -> None:
    with store_gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        first = create(stub, "docs", DOCUMENTS[:20])
        assert (first.revision, first.active_revision) == (1, 1)
        revision, old = embed(stub, "docs")
        assert revision == 1

        built = create(stub, "docs", DOCUMENTS[20:], replace=True, activate=False)
        assert (built.revision, built.active_revision) == (2, 1)
        revision, still = embed(stub, "docs")  # the bare name still serves revision 1
        assert revision == 1
        np.testing.assert_allclose(still, old, atol=1e-6)
        revision, new = embed(stub, "docs@2")
        assert revision == 2 and not np.allclose(new, old, atol=1e-3)

        described = stub.GetContextSet(pb.GetContextSetRequest(name="docs"))
        assert described.active_revision == 1 and described.context_set.revision == 1
        assert [(r.revision, r.active) for r in described.revisions] == [(1, True), (2, False)]
        assert described.revisions[1].context_id == built.context_id
        assert described.revisions[1].source_document_count == len(DOCUMENTS) - 20
        pinned = stub.GetContextSet(pb.GetContextSetRequest(name="docs@2"))
        assert pinned.context_set.revision == 2 and pinned.active_revision == 1

        activated = stub.ActivateContextSet(pb.ActivateContextSetRequest(name="docs", revision=2))
        assert activated.context_set.revision == 2 and activated.context_set.active_revision == 2
        revision, now = embed(stub, "docs")
        assert revision == 2
        np.testing.assert_allclose(now, new, atol=1e-6)

        stub.ActivateContextSet(pb.ActivateContextSetRequest(name="docs", revision=1))
        revision, back = embed(stub, "docs")
        assert revision == 1
        np.testing.assert_allclose(back, old, atol=1e-6)
        revision, pinned_old = embed(stub, "docs@1")
        np.testing.assert_allclose(pinned_old, old, atol=1e-6)

        error = refused(lambda: stub.DeleteContextSet(pb.DeleteContextSetRequest(name="docs@1")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "activate another first" in (error.details() or "")
        stub.DeleteContextSet(pb.DeleteContextSetRequest(name="docs@2"))
        error = refused(lambda: embed(stub, "docs@2"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "revision 2 was pruned or deleted" in (error.details() or "")
        error = refused(lambda: embed(stub, "docs@x"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = refused(
            lambda: stub.ActivateContextSet(pb.ActivateContextSetRequest(name="docs", revision=9))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "has no revision 9; the latest is 2" in (error.details() or "")


def test_pruning_keeps_the_configured_number_and_says_so(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(context_revisions_kept=2)
    with gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        create(stub, "docs", DOCUMENTS[:10])
        for start in (10, 20, 30):
            create(stub, "docs", DOCUMENTS[start : start + 10], replace=True)
        described = stub.GetContextSet(pb.GetContextSetRequest(name="docs"))
        assert [r.revision for r in described.revisions] == [3, 4]
        error = refused(lambda: embed(stub, "docs@1"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "kept revisions are 3, 4 (active: 4)" in (error.details() or "")
        assert embed(stub, "docs@3")[0] == 3
