"""Libraries that reach the gateway: langchain-openai's OpenAIEmbeddings over the HTTP API, and
our LangChain and LlamaIndex adapters over the typed client; all equal the client's vectors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from cde_client import CdeClient
from cde_client.langchain import CdeEmbeddings
from cde_client.llamaindex import CdeEmbedding
from langchain_openai import OpenAIEmbeddings

DOCS = ["the cat sat on the mat", "stock markets fell sharply", "a recipe for apple pie"]
QUERY = "where did the cat sit"
TOLERANCE = 1e-6


@pytest.fixture
def context_set(client: CdeClient, unique: str) -> str:
    client.create_context_set(unique, DOCS)
    return unique


def test_langchain_openai_embeddings_over_http(
    base_url: str, client: CdeClient, context_set: str
) -> None:
    embeddings = OpenAIEmbeddings(
        base_url=f"{base_url}/v1",
        api_key="not-checked",  # type: ignore[arg-type]
        model=f"{context_set}:query",
        check_embedding_ctx_length=False,
    )
    expected = client.embed_queries([QUERY, *DOCS], context=context_set).embeddings
    np.testing.assert_allclose(embeddings.embed_query(QUERY), expected[0], atol=TOLERANCE)
    np.testing.assert_allclose(embeddings.embed_documents(DOCS), expected[1:], atol=TOLERANCE)


def test_langchain_adapter(gateway_address: str, client: CdeClient, context_set: str) -> None:
    adapter = CdeEmbeddings(gateway_address, context=context_set)
    documents = client.embed_documents(DOCS, context=context_set).embeddings
    query = client.embed_queries([QUERY], context=context_set).embeddings[0]
    np.testing.assert_allclose(adapter.embed_documents(DOCS), documents, atol=TOLERANCE)
    np.testing.assert_allclose(adapter.embed_query(QUERY), query, atol=TOLERANCE)
    assert not np.allclose(adapter.embed_query(DOCS[0]), documents[0], atol=1e-3)  # prompts differ

    async def run() -> tuple[list[list[float]], list[float]]:
        return await adapter.aembed_documents(DOCS), await adapter.aembed_query(QUERY)

    async_documents, async_query = asyncio.run(run())
    np.testing.assert_allclose(async_documents, documents, atol=TOLERANCE)
    np.testing.assert_allclose(async_query, query, atol=TOLERANCE)
    assert asyncio.run(run())[1] == async_query  # a new event loop gets its own async client


def test_llamaindex_adapter(gateway_address: str, client: CdeClient, context_set: str) -> None:
    adapter = CdeEmbedding(gateway_address, context=context_set, embed_batch_size=2)
    documents = client.embed_documents(DOCS, context=context_set).embeddings
    query = client.embed_queries([QUERY], context=context_set).embeddings[0]
    np.testing.assert_allclose(adapter.get_text_embedding(DOCS[0]), documents[0], atol=TOLERANCE)
    np.testing.assert_allclose(adapter.get_text_embedding_batch(DOCS), documents, atol=TOLERANCE)
    np.testing.assert_allclose(adapter.get_query_embedding(QUERY), query, atol=TOLERANCE)

    async def run() -> tuple[list[float], list[float], list[list[float]]]:
        return (
            await adapter.aget_query_embedding(QUERY),
            await adapter.aget_text_embedding(DOCS[1]),
            await adapter.aget_text_embedding_batch(DOCS),
        )

    async_query, async_text, async_batch = asyncio.run(run())
    np.testing.assert_allclose(async_query, query, atol=TOLERANCE)
    np.testing.assert_allclose(async_text, documents[1], atol=TOLERANCE)
    np.testing.assert_allclose(async_batch, documents, atol=TOLERANCE)
    assert adapter.class_name() == "CdeEmbedding" and adapter.context == context_set
