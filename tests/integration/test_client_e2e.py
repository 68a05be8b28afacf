"""The client against the real stack (gateway + Triton, tiny checkpoint), sync and async."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cde_client import (
    AlreadyExists,
    AsyncCdeClient,
    CdeClient,
    CdeError,
    ContextSampling,
    ContextSet,
    DeadlineExceeded,
    EmbedResult,
    HealthStatus,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from support.client_fixtures import SMALL_MAX_TEXTS, run_async

if TYPE_CHECKING:
    from support.gateway_fixtures import GatewayFactory, GatewayThread

DOCUMENTS = [
    f"Document {i} about {topic}: notes on {topic} and related matters."
    for i, topic in enumerate(
        ["rivers", "mountains", "databases", "compilers", "gardens", "violins", "tides"] * 4
    )
]
QUERIES = ["where do rivers flow?", "how do compilers work?", "tuning a violin"]
ATOL = 1e-5


def same_result(a: EmbedResult, b: EmbedResult) -> None:
    """Same embeddings (up to float noise: Triton batches requests differently each time)."""
    assert a.embeddings.shape == b.embeddings.shape
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=ATOL)
    assert a.token_counts == b.token_counts
    assert (a.model_id, a.context_set, a.context_revision) == (
        b.model_id,
        b.context_set,
        b.context_revision,
    )


# --- service info ---------------------------------------------------------------------------


def test_health_and_model_info(client: CdeClient) -> None:
    assert client.health() is HealthStatus.SERVING
    assert client.health("cde.v1.EmbeddingService") is HealthStatus.SERVING
    info = client.model_info()
    assert info.hidden_size == 64 and info.context_size == 16
    assert info.fingerprint and info.max_tokens > 0
    assert info.limits.max_texts_per_request > 0 and info.limits.max_message_bytes > 0


def test_embed_result_shape_and_options(client: CdeClient) -> None:
    result = client.embed(QUERIES, prompt="query")
    assert result.embeddings.dtype == np.float32
    assert result.embeddings.shape == (3, 64)
    assert len(result.token_counts) == 3 and all(n > 2 for n in result.token_counts)
    assert result.model_id == client.model_info().fingerprint
    assert result.context_set == "" and result.context_revision == 0
    assert len(result.request_ids) == 1 and result.request_ids[0]
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    raw = client.embed(QUERIES, prompt="query", normalize=False)
    np.testing.assert_allclose(
        raw.embeddings / np.linalg.norm(raw.embeddings, axis=1, keepdims=True),
        result.embeddings,
        atol=1e-5,
    )
    same_result(client.embed_queries(QUERIES), result)
    as_documents = client.embed_documents(QUERIES)
    assert not np.allclose(as_documents.embeddings, result.embeddings)
    same_result(client.embed(QUERIES, prompt="document"), as_documents)


# --- sync and async twins -------------------------------------------------------------------


async def async_session(address: str, name: str) -> dict[str, object]:
    async with AsyncCdeClient(address) as client:
        listed = [cs async for cs in client.list_context_sets(page_size=2)]

        async def batches() -> AsyncIterator[list[str]]:
            yield DOCUMENTS[:5]
            yield QUERIES

        return {
            "health": await client.health(),
            "info": await client.model_info(),
            "context_set": await client.get_context_set(name, include_embeddings=True),
            "listed": [cs for cs in listed if cs.name == name],
            "prompts": await client.list_prompts(),
            "queries": await client.embed_queries(QUERIES, context=name),
            "documents": await client.embed_documents(DOCUMENTS, context=name),
            "stream": [r async for r in client.embed_stream(batches(), context=name)],
        }


def sync_session(address: str, name: str) -> dict[str, object]:
    with CdeClient(address) as client:
        listed = list(client.list_context_sets(page_size=2))

        def batches() -> Iterator[list[str]]:
            yield DOCUMENTS[:5]
            yield QUERIES

        return {
            "health": client.health(),
            "info": client.model_info(),
            "context_set": client.get_context_set(name, include_embeddings=True),
            "listed": [cs for cs in listed if cs.name == name],
            "prompts": client.list_prompts(),
            "queries": client.embed_queries(QUERIES, context=name),
            "documents": client.embed_documents(DOCUMENTS, context=name),
            "stream": list(client.embed_stream(batches(), context=name)),
        }


def test_sync_and_async_clients_give_identical_results(
    client: CdeClient, gateway: GatewayThread, unique: str
) -> None:
    client.create_context_set(unique, DOCUMENTS)
    sync = sync_session(gateway.address, unique)
    asynchronous = run_async(async_session(gateway.address, unique))
    assert sync.keys() == asynchronous.keys()
    for key in ("health", "info", "context_set", "listed", "prompts"):
        assert sync[key] == asynchronous[key], key
    sync_set, async_set = sync["context_set"], asynchronous["context_set"]
    assert isinstance(sync_set, ContextSet) and isinstance(async_set, ContextSet)
    assert sync_set.dataset_embeddings is not None and async_set.dataset_embeddings is not None
    assert np.array_equal(sync_set.dataset_embeddings, async_set.dataset_embeddings)
    for key in ("queries", "documents"):
        a, b = sync[key], asynchronous[key]
        assert isinstance(a, EmbedResult) and isinstance(b, EmbedResult)
        same_result(a, b)
        assert a.context_set == unique and a.context_revision == 1
    sync_stream, async_stream = sync["stream"], asynchronous["stream"]
    assert isinstance(sync_stream, list) and isinstance(async_stream, list)
    assert [len(r) for r in sync_stream] == [5, 3]
    for a, b in zip(sync_stream, async_stream, strict=True):
        same_result(a, b)


# --- chunking -------------------------------------------------------------------------------


def test_large_inputs_are_split_and_keep_their_order(small_gateway: GatewayThread) -> None:
    texts = [f"text number {i}: {DOCUMENTS[i % len(DOCUMENTS)]}" for i in range(11)]
    with CdeClient(small_gateway.address) as client:
        assert client.model_info().limits.max_texts_per_request == SMALL_MAX_TEXTS
        whole = client.embed(texts, prompt="query")
        assert len(whole.request_ids) == 4  # ceil(11 / 3) calls
        assert len(set(whole.request_ids)) == 4
        one_by_one = np.concatenate([client.embed([t], prompt="query").embeddings for t in texts])
        np.testing.assert_allclose(whole.embeddings, one_by_one, atol=ATOL)
        streamed = list(client.embed_stream([texts[:7], texts[7:8], texts[8:]], prompt="query"))
        assert [len(r) for r in streamed] == [7, 1, 3]
        np.testing.assert_allclose(
            np.concatenate([r.embeddings for r in streamed]), one_by_one, atol=ATOL
        )

    async def embed_async() -> EmbedResult:
        async with AsyncCdeClient(small_gateway.address) as async_client:
            return await async_client.embed(texts, prompt="query")

    same_result(run_async(embed_async()), whole)


# --- context sets and prompts ---------------------------------------------------------------


def test_context_set_lifecycle(client: CdeClient, unique: str) -> None:
    created = client.create_context_set(unique, (d for d in DOCUMENTS[:5]), progress=True)
    assert created.name == unique and created.revision == 1
    assert created.source_document_count == 5
    assert created.context_size == 16 and created.sampling is ContextSampling.OVERSAMPLED
    assert created.compatible and created.context_id
    with pytest.raises(AlreadyExists) as excinfo:
        client.create_context_set(unique, DOCUMENTS)
    assert excinfo.value.request_id

    replaced = client.create_context_set(unique, DOCUMENTS, replace=True, seed=7)
    assert replaced.revision == 2 and replaced.source_document_count == len(DOCUMENTS)
    assert replaced.sampling is ContextSampling.SUBSAMPLED
    described = client.get_context_set(unique, include_documents=True, include_embeddings=True)
    assert described.revision == 2
    assert described.documents is not None and len(described.documents) == 16
    assert set(described.documents) <= set(DOCUMENTS)
    assert described.dataset_embeddings is not None
    assert described.dataset_embeddings.shape == (16, 64)
    assert client.embed(QUERIES, context=unique).context_revision == 2

    for suffix in ("a", "b"):
        client.create_context_set(f"{unique}-{suffix}", DOCUMENTS[:3])
    names = [cs.name for cs in client.list_context_sets(page_size=1)]
    assert names == sorted(names)
    assert {unique, f"{unique}-a", f"{unique}-b"} <= set(names)

    for name in (unique, f"{unique}-a", f"{unique}-b"):
        client.delete_context_set(name)
    with pytest.raises(NotFound):
        client.get_context_set(unique)
    with pytest.raises(NotFound):
        client.delete_context_set(unique)


def test_a_failing_document_source_creates_nothing(client: CdeClient, unique: str) -> None:
    def documents() -> Iterator[str]:
        yield from DOCUMENTS[:3]
        raise OSError("the corpus file went away")

    with pytest.raises(OSError, match="went away"):
        client.create_context_set(unique, documents())
    with pytest.raises(NotFound):
        client.get_context_set(unique)


def test_custom_prompts(client: CdeClient, unique: str) -> None:
    stored = client.put_prompt(unique, "title: ")
    assert (stored.name, stored.text, stored.builtin) == (unique, "title: ", False)
    prompts = {p.name: p for p in client.list_prompts()}
    assert prompts["query"].builtin and prompts["query"].text == "search_query: "
    assert prompts[unique] == stored
    custom = client.embed(QUERIES, prompt=unique)
    assert not np.allclose(custom.embeddings, client.embed(QUERIES).embeddings)
    client.delete_prompt(unique)
    with pytest.raises(NotFound):
        client.embed(QUERIES, prompt=unique)
    with pytest.raises(NotFound):
        client.delete_prompt(unique)


# --- errors end to end ----------------------------------------------------------------------


def test_statuses_from_the_gateway_raise_their_exceptions(client: CdeClient, unique: str) -> None:
    cases: list[tuple[type[CdeError], object]] = [
        (NotFound, lambda: client.embed(["x"], context=f"{unique}-missing")),
        (NotFound, lambda: client.get_context_set(f"{unique}-missing")),
        (NotFound, lambda: client.delete_prompt(f"{unique}-missing")),
        (InvalidArgument, lambda: client.embed([])),
        (InvalidArgument, lambda: client.get_context_set("not a valid name!")),
        (InvalidArgument, lambda: client.put_prompt("query", "changed: ")),
        (InvalidArgument, lambda: client.create_context_set(unique, [])),
        (InvalidArgument, lambda: client.embed(["word " * 5000], truncate=False)),
        (DeadlineExceeded, lambda: client.embed(DOCUMENTS, timeout=1e-4)),
    ]
    for expected, call in cases:
        with pytest.raises(expected) as excinfo:
            call()  # type: ignore[operator]
        error = excinfo.value
        assert error.message
        if expected is not DeadlineExceeded:  # raised by the client's own deadline
            assert error.request_id, f"{expected.__name__} without a request id"


def test_oversized_message_is_resource_exhausted(gateway_factory: GatewayFactory) -> None:
    limit = 1 << 20
    small = gateway_factory(max_message_bytes=limit)
    with CdeClient(small.address) as client, pytest.raises(ResourceExhausted):
        client.embed(["x" * (limit + 1024)])


def test_async_client_raises_the_same_exceptions(gateway: GatewayThread, unique: str) -> None:
    async def scenario() -> list[type[CdeError]]:
        raised: list[type[CdeError]] = []
        async with AsyncCdeClient(gateway.address) as client:
            for coroutine in (
                client.embed(["x"], context=f"{unique}-missing"),
                client.embed([]),
                client.get_context_set("not a valid name!"),
            ):
                try:
                    await coroutine
                except CdeError as error:
                    raised.append(type(error))
        return raised

    assert run_async(scenario()) == [NotFound, InvalidArgument, InvalidArgument]


def test_async_client_can_be_reused_from_another_event_loop(gateway: GatewayThread) -> None:
    client = AsyncCdeClient(gateway.address)
    assert run_async(client.health()) is HealthStatus.SERVING
    assert run_async(client.health()) is HealthStatus.SERVING  # a new loop, a new channel
    run_async(client.close())


def test_stream_item_error_fails_that_batch(client: CdeClient) -> None:
    results: list[EmbedResult] = []
    with pytest.raises(InvalidArgument):
        for result in client.embed_stream([QUERIES, [], QUERIES]):
            results.append(result)
    assert len(results) == 1 and len(results[0]) == 3


def test_leaving_a_stream_early_cancels_it(client: CdeClient) -> None:
    def batches() -> Iterator[list[str]]:
        for index in range(100_000):
            yield [f"bulk text {index} " * 50]

    received = 0
    for result in client.embed_stream(batches()):
        received += len(result)
        break  # closes the iterator, which cancels the stream
    assert received == 1
    assert len(client.embed(QUERIES)) == 3  # the client is still fine


def test_unreachable_server_is_unavailable() -> None:
    with CdeClient("127.0.0.1:1", retry=False) as client, pytest.raises(Unavailable):
        client.health()

    async def scenario() -> None:
        async with AsyncCdeClient("127.0.0.1:1", retry=False) as client:
            await client.model_info()

    with pytest.raises(Unavailable):
        run_async(scenario())


def test_bare_string_is_refused(client: CdeClient) -> None:
    with pytest.raises(TypeError, match="single string"):
        client.embed("just one text")
