"""Helpers of the store behaviour suites: small deterministic sets and a store per test body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from cde_server.stores import Store, StoredContextSet, open_store
from cde_server.triton.protocol import context_id

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one test body on a fresh event loop."""
    return asyncio.run(coroutine)


async def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run `body`, always close."""
    store = await open_store(url)
    try:
        return await body(store)
    finally:
        await store.close()


def make_set(
    name: str, value: float = 1.0, *, rows: int = 4, dim: int = 3, fingerprint: str = "fp-a"
) -> StoredContextSet:
    """A small set whose embeddings and documents all derive from `value`."""
    embeddings = np.full((rows, dim), value, dtype=np.float32)
    embeddings[0, 0] = -value
    return StoredContextSet(
        name=name,
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        model_fingerprint=fingerprint,
        prompt="document",
        source_document_count=rows + 1,
        revision=0,
        sampling="subsampled",
        context_id=context_id(embeddings),
        embeddings=embeddings,
        documents=tuple(f"doc {value} #{i}" for i in range(rows)),
    )
