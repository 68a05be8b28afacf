"""Embed and EmbedStream end to end: real gRPC, real Triton (tiny checkpoint), in-process parity."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.gateway.wire import matrix_values
from support.paths import TINY_CHECKPOINT as TINY

DOC = "search_document: "
QUERY = "search_query: "
TOLERANCE = 1e-5
CORPUS = [
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy.",
    "The Treaty of Westphalia was signed in 1648.",
    "Rust guarantees memory safety without a garbage collector.",
    "Mount Everest is the highest mountain above sea level.",
]
QUERIES = ["what powers the cell", "when was westphalia signed", "memory safe languages"]


class Reference:
    """The in-process model computing what the gateway should return."""

    def __init__(self) -> None:
        import torch
        from cde_model import load_model

        self.torch = torch
        self.model = load_model(str(TINY), dtype="float32", device="cpu")
        self.n = self.model.info.corpus_size

    def dataset(self, documents: Sequence[str]) -> npt.NDArray[np.float32]:
        ids, mask = self.model.tokenizer.encode([DOC + d for d in documents])
        with self.torch.inference_mode():
            out = self.model.first_stage(self.torch.as_tensor(ids), self.torch.as_tensor(mask))
        return out.numpy()

    def embed(
        self, texts: Sequence[str], dataset: npt.NDArray[np.float32], *, normalize: bool = True
    ) -> npt.NDArray[np.float32]:
        context = self.model.prepare_context(dataset)
        ids, mask = self.model.tokenizer.encode(list(texts))
        with self.torch.inference_mode():
            out = self.model.second_stage(
                self.torch.as_tensor(ids), self.torch.as_tensor(mask), context
            ).numpy()
        if normalize:
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def default_dataset(self) -> npt.NDArray[np.float32]:
        from cde_model.context import default_context

        return self.dataset(default_context(self.n))

    def selected_dataset(self, documents: Sequence[str], seed: int = 42) -> npt.NDArray[np.float32]:
        from cde_model.context import select_context

        return self.dataset(select_context(documents, self.n, seed=seed))


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def corpus_set(stub: pb_grpc.EmbeddingServiceStub) -> Iterator[str]:
    """A context set made from CORPUS, shared by this module's tests."""
    name = f"corpus-{uuid.uuid4().hex[:8]}"
    create(stub, name, CORPUS)
    yield name
    stub.DeleteContextSet(pb.DeleteContextSetRequest(name=name))


def create(
    stub: pb_grpc.EmbeddingServiceStub,
    name: str,
    documents: Sequence[str],
    *,
    chunk: int = 2,
    **options: Any,
) -> pb.CreateContextSetResponse:
    """CreateContextSet with the documents in chunks."""

    def messages() -> Iterator[pb.CreateContextSetRequest]:
        yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **options))
        for start in range(0, len(documents), chunk):
            batch = pb.DocumentBatch(documents=documents[start : start + chunk])
            yield pb.CreateContextSetRequest(documents=batch)

    response: pb.CreateContextSetResponse = stub.CreateContextSet(messages())
    return response


def vectors(response: pb.EmbedResponse) -> npt.NDArray[np.float32]:
    return matrix_values(response.embeddings)


def test_default_context_matches_in_process_model(
    stub: pb_grpc.EmbeddingServiceStub, reference: Reference
) -> None:
    response = stub.Embed(pb.EmbedRequest(texts=QUERIES, prompt="query"))
    expected = reference.embed([QUERY + q for q in QUERIES], reference.default_dataset())
    assert vectors(response).shape == (len(QUERIES), reference.model.info.hidden_size)
    np.testing.assert_allclose(vectors(response), expected, atol=TOLERANCE)
    assert response.model_id == reference.model.info.fingerprint
    assert response.context_set == "" and response.context_revision == 0
    assert len(response.request_id) > 0


def test_named_context_matches_in_process_model(
    stub: pb_grpc.EmbeddingServiceStub, reference: Reference, corpus_set: str
) -> None:
    dataset = reference.selected_dataset(CORPUS)
    response = stub.Embed(pb.EmbedRequest(texts=CORPUS, context_set=corpus_set))
    np.testing.assert_allclose(
        vectors(response), reference.embed([DOC + d for d in CORPUS], dataset), atol=TOLERANCE
    )
    assert response.context_set == corpus_set and response.context_revision == 1
    raw = stub.Embed(
        pb.EmbedRequest(texts=QUERIES, prompt="query", context_set=corpus_set, normalize=False)
    )
    expected_raw = reference.embed([QUERY + q for q in QUERIES], dataset, normalize=False)
    np.testing.assert_allclose(vectors(raw), expected_raw, atol=TOLERANCE, rtol=1e-5)


def test_context_changes_the_embeddings(
    stub: pb_grpc.EmbeddingServiceStub, corpus_set: str
) -> None:
    default = vectors(stub.Embed(pb.EmbedRequest(texts=QUERIES)))
    named = vectors(stub.Embed(pb.EmbedRequest(texts=QUERIES, context_set=corpus_set)))
    assert np.abs(default - named).max() > 1e-3


def test_token_counts_and_truncation(
    stub: pb_grpc.EmbeddingServiceStub, reference: Reference
) -> None:
    long_text = "word " * 1000
    response = stub.Embed(pb.EmbedRequest(texts=["hello", long_text]))
    expected_short = int(reference.model.tokenizer.encode([DOC + "hello"])[1].sum())
    assert list(response.token_counts) == [expected_short, reference.model.info.max_tokens]
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(texts=["hello", long_text], truncate=False))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "indices 1" in info.value.details()
    ok = stub.Embed(pb.EmbedRequest(texts=["hello"], truncate=False))
    assert ok.embeddings.rows == 1


def test_custom_prompt_is_applied(stub: pb_grpc.EmbeddingServiceStub, reference: Reference) -> None:
    name = f"p-{uuid.uuid4().hex[:8]}"
    stub.PutPrompt(pb.PutPromptRequest(name=name, text="classification: "))
    try:
        custom = vectors(stub.Embed(pb.EmbedRequest(texts=QUERIES, prompt=name)))
        builtin = vectors(stub.Embed(pb.EmbedRequest(texts=QUERIES, prompt="classification")))
        np.testing.assert_allclose(custom, builtin, atol=1e-6)
    finally:
        stub.DeletePrompt(pb.DeletePromptRequest(name=name))


def test_request_id_round_trip(stub: pb_grpc.EmbeddingServiceStub) -> None:
    response, call = stub.Embed.with_call(
        pb.EmbedRequest(texts=["x"]), metadata=(("x-request-id", "my-id-123"),)
    )
    assert response.request_id == "my-id-123"
    assert ("x-request-id", "my-id-123") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(texts=[]), metadata=(("x-request-id", "bad-one"),))
    assert ("x-request-id", "bad-one") in tuple(info.value.trailing_metadata())


def test_many_texts_in_one_request(stub: pb_grpc.EmbeddingServiceStub) -> None:
    texts = [f"text number {i}" for i in range(150)]  # more than one Triton batch
    response = stub.Embed(pb.EmbedRequest(texts=texts))
    single = vectors(stub.Embed(pb.EmbedRequest(texts=[texts[120]])))
    assert response.embeddings.rows == 150
    np.testing.assert_allclose(vectors(response)[120:121], single, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors(response), axis=1), 1.0, atol=1e-5)


def test_embed_stream_in_order_with_item_errors(
    stub: pb_grpc.EmbeddingServiceStub, corpus_set: str
) -> None:
    requests = [pb.EmbedRequest(texts=[f"item {i}"], context_set=corpus_set) for i in range(40)]
    requests[7] = pb.EmbedRequest(texts=[])
    requests[21] = pb.EmbedRequest(texts=["x"], context_set="no-such-set")
    answers = list(stub.EmbedStream(pb.EmbedStreamRequest(request=r) for r in requests))
    assert [a.sequence for a in answers] == list(range(40))
    assert answers[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[21].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-set" in answers[21].error.message
    single = vectors(stub.Embed(requests[30]))
    np.testing.assert_allclose(vectors(answers[30].response), single, atol=1e-6)
    assert all(a.HasField("response") for i, a in enumerate(answers) if i not in (7, 21))
