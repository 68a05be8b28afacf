"""TritonEndpoint against the session's Triton: both embed paths, the cache-miss protocol."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import numpy.typing as npt
import pytest
from cde_server.errors import InferenceUnavailableError
from cde_server.inference.interface import ContextRef, NullObserver
from cde_server.inference.triton_endpoint import TritonEndpoint
from cde_server.triton import protocol as triton_protocol


class Observer(NullObserver):
    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.codes: list[str] = []
        self.models: list[str] = []

    def triton_call(self, model: str, seconds: float, code: str) -> None:
        self.codes.append(code)
        self.models.append(model)

    def context_cache(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1


async def fresh_context(backend: TritonEndpoint) -> npt.NDArray[np.float32]:
    """Dataset embeddings no other test has sent to Triton."""
    info = await backend.model_info()
    tag = uuid.uuid4().hex
    documents = [f"search_document: {tag} document {i}" for i in range(info.corpus_size)]
    return (await backend.embed_context(documents)).vectors


async def fresh_context_ref(backend: TritonEndpoint) -> ContextRef:
    """A fresh context whose loader hands out its embeddings."""
    dataset = await fresh_context(backend)

    async def load() -> npt.NDArray[np.float32]:
        return dataset

    return ContextRef(triton_protocol.context_id(dataset), load)


@pytest.mark.parametrize("path", ["direct", "ensemble"])
def test_cache_miss_protocol(triton_grpc_url: str, path: str) -> None:
    async def scenario() -> None:
        observer = Observer()
        backend = TritonEndpoint(triton_grpc_url, embed_path=path, observer=observer)
        try:
            assert await backend.ready()
            dataset = await fresh_context(backend)
            loads = 0

            async def load() -> npt.NDArray[np.float32]:
                nonlocal loads
                loads += 1
                await asyncio.sleep(0.01)
                return dataset

            context = ContextRef(triton_protocol.context_id(dataset), load)
            texts = [f"search_query: question {i}" for i in range(150)]  # three chunks
            first = await backend.embed(texts, context, max_tokens=512)
            assert loads == 1 and observer.misses >= 1
            misses = observer.misses
            second = await backend.embed(texts, context, max_tokens=512)
            assert loads == 1 and observer.misses == misses and observer.hits >= 3
            np.testing.assert_allclose(first.vectors, second.vectors, atol=1e-6)
            assert first.vectors.shape == (150, dataset.shape[1])
            assert (first.token_counts > 2).all() and not first.truncated.any()
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_paths_agree(triton_grpc_url: str) -> None:
    async def scenario() -> None:
        direct = TritonEndpoint(triton_grpc_url, embed_path="direct")
        ensemble = TritonEndpoint(triton_grpc_url, embed_path="ensemble")
        try:
            context = await fresh_context_ref(direct)
            texts = ["search_document: short", "search_document: " + "longer text " * 40]
            a = await direct.embed(texts, context, max_tokens=512)
            b = await ensemble.embed(texts, context, max_tokens=512)
            np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
            np.testing.assert_array_equal(a.token_counts, b.token_counts)
            c = await ensemble.embed_context(texts)
            d = await direct.embed_context(texts)
            np.testing.assert_allclose(c.vectors, d.vectors, atol=1e-5)
        finally:
            await direct.close()
            await ensemble.close()

    asyncio.run(scenario())


def test_gateway_tokenizing_matches_cde_tokenize(triton_grpc_url: str) -> None:
    """tokenizer="auto" tokenizes in the gateway (no cde_tokenize call) with the same result as
    "off": embeddings, token counts and truncation, for texts, context documents and token ids."""

    async def scenario() -> None:
        observer = Observer()
        local = TritonEndpoint(triton_grpc_url, tokenizer="auto", observer=observer)
        remote = TritonEndpoint(triton_grpc_url, tokenizer="off")
        try:
            context = await fresh_context_ref(remote)
            texts = [
                "search_query: Héllo, naïve café 東京 🙂",
                "search_document: " + "a longer text " * 300,  # truncated
                "search_query: x",
            ]
            await remote.embed(texts[:1], context, max_tokens=512)  # cached from here on
            a = await local.embed(texts, context, max_tokens=512)
            b = await remote.embed(texts, context, max_tokens=512)
            np.testing.assert_array_equal(a.vectors, b.vectors)
            np.testing.assert_array_equal(a.token_counts, b.token_counts)
            np.testing.assert_array_equal(a.truncated, b.truncated)
            assert a.truncated.tolist() == [False, True, False]
            c = await local.embed_context(texts)
            d = await remote.embed_context(texts)
            np.testing.assert_array_equal(c.vectors, d.vectors)
            rows = [[1000, 2000, 3000], [42]]
            e = await local.embed_tokens(rows, "search_query: ", context, max_tokens=512)
            f = await remote.embed_tokens(rows, "search_query: ", context, max_tokens=512)
            np.testing.assert_array_equal(e.vectors, f.vectors)
            np.testing.assert_array_equal(e.token_counts, f.token_counts)
            assert triton_protocol.TOKENIZE_MODEL not in observer.models
            assert observer.models.count(triton_protocol.MODEL_INFO_MODEL) == 1  # fetched once
        finally:
            await local.close()
            await remote.close()

    asyncio.run(scenario())


def test_unreachable_triton() -> None:
    async def scenario() -> None:
        backend = TritonEndpoint("127.0.0.1:1", timeout_s=2.0)
        try:
            assert not await backend.ready(1.0)
            with pytest.raises(InferenceUnavailableError):
                await backend.model_info()
        finally:
            await backend.close()

    asyncio.run(scenario())
