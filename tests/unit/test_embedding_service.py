"""`EmbeddingService` against a fake inference (no Triton): its own rules, tested alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import numpy as np
import pytest
from cde_server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from cde_server.gateway.admission import FairAdmission
from cde_server.gateway.call_scope import ActiveCall
from cde_server.gateway.limits import Limits, TenantLimiter
from cde_server.gateway.metrics import GatewayMetrics
from cde_server.gateway.service import ContextSetInput, EmbeddingService, EmbedInput
from cde_server.gateway.settings import GatewaySettings
from cde_server.inference.interface import ContextRef, Encoded, FloatMatrix, ServedModelInfo
from cde_server.inference.served_model import ServedModel
from cde_server.stores.base import Store
from cde_server.stores.sqlite import SqliteStore

HIDDEN, N = 4, 3


class FakeInference:
    """Stage 1: one row per document from its length; stage 2: the text's length plus the
    context's first value, so results show which context was used."""

    def __init__(self, fingerprint: str = "f" * 64) -> None:
        self.fingerprint = fingerprint
        self.first_stage_documents: list[str] = []

    async def model_info(self, timeout_s: float | None = None) -> ServedModelInfo:
        return ServedModelInfo("fake", self.fingerprint, HIDDEN, N, 16, "float32", "cpu")

    async def embed(
        self,
        texts: Sequence[str],
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        dataset = await context.load()
        vectors = np.array(
            [[len(t), float(dataset[0, 0]), 0.0, 0.0] for t in texts], dtype=np.float32
        )
        counts = np.array([len(t) for t in texts], dtype=np.int64)
        return Encoded(vectors, counts, counts >= max_tokens)

    async def embed_tokens(
        self,
        rows: Sequence[Sequence[int]],
        prefix: str,
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        return await self.embed(
            [prefix + " ".join(map(str, row)) for row in rows], context, max_tokens=max_tokens
        )

    async def embed_context(
        self, documents: Sequence[str], *, timeout_s: float | None = None
    ) -> Encoded:
        self.first_stage_documents.extend(documents)
        vectors = np.array([[len(d), 1.0, 0.0, 0.0] for d in documents], dtype=np.float32)
        counts = np.ones(len(documents), dtype=np.int64)
        return Encoded(vectors, counts, np.zeros(len(documents), dtype=np.bool_))

    async def ready(self, timeout_s: float = 2.0) -> bool:
        return True

    def describe(self) -> str:
        return "fake"

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        pass

    async def close(self) -> None:
        pass


class CachingInference(FakeInference):
    """FakeInference that loads each context once, as Triton's context cache does."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: dict[str, FloatMatrix] = {}

    async def embed(self, texts: Sequence[str], context: ContextRef, **options: Any) -> Encoded:
        if context.context_id not in self.contexts:
            self.contexts[context.context_id] = await context.load()
        cached = self.contexts[context.context_id]

        async def from_cache() -> FloatMatrix:
            return cached

        return await super().embed(texts, ContextRef(context.context_id, from_cache), **options)


class CountingStore:
    """Delegates to a real store and records the name of every call made to it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await method(*args, **kwargs)

        return counted


async def service_with(
    inference: FakeInference, model: ServedModel | None = None, store: Store | None = None
) -> EmbeddingService:
    settings = GatewaySettings(triton_url="unused:1", max_texts_per_request=4)
    return EmbeddingService(
        settings=settings,
        inference=inference,
        store=store or await SqliteStore.connect(":memory:"),
        model=model or ServedModel(inference, document_prefix="search_document: "),
        metrics=GatewayMetrics(),
        limiter=TenantLimiter(lambda _tenant: Limits()),
        admission=FairAdmission(capacity=1000, max_queued=1000),
    )


async def batches(*documents: Sequence[str]) -> AsyncIterator[Sequence[str]]:
    for batch in documents:
        yield batch


def call(tenant: str = "", admin: bool = False) -> ActiveCall:
    return ActiveCall("test", "request-1", tenant=tenant, admin=admin)


def test_embed_applies_prompt_normalizes_and_uses_the_named_context() -> None:
    async def scenario() -> None:
        service = await service_with(FakeInference())
        await service.create_context_set(call(), ContextSetInput("docs"), batches(["a", "bb"]))
        raw = await service.embed(
            call(), EmbedInput(["hi"], prompt="query", context_set="docs", normalize=False)
        )
        # "search_query: hi" is 16 characters; the first stored row is "search_document: a"
        assert raw.vectors[0, 0] == len("search_query: hi")
        assert raw.vectors[0, 1] == len("search_document: a")
        assert raw.context_set == "docs" and raw.context_revision >= 1
        unit = await service.embed(call(), EmbedInput(["hi"], context_set="docs"))
        assert np.isclose(np.linalg.norm(unit.vectors[0]), 1.0)

    asyncio.run(scenario())


def test_embed_reads_the_store_once_per_request() -> None:
    """The hot path: a cached context costs one store read (its summary), pinned or not."""

    async def scenario() -> None:
        store = CountingStore(await SqliteStore.connect(":memory:"))
        service = await service_with(CachingInference(), store=cast(Store, store))
        await service.create_context_set(call(), ContextSetInput("docs"), batches(["a"]))
        built = ContextSetInput("docs", replace=True, activate=False)
        await service.create_context_set(call(), built, batches(["bb"]))
        for context, revision in (("docs", 1), ("docs@2", 2), ("docs@1", 1), ("", 0)):
            request = EmbedInput(["hi"], prompt="query", context_set=context)
            await service.embed(call(), request)  # a cache miss loads the revision once
            store.calls.clear()
            result = await service.embed(call(), request)
            assert result.context_revision == revision
            assert store.calls == (["get_summary"] if context else []), (context, store.calls)

    asyncio.run(scenario())


def test_embed_checks_texts_before_inference() -> None:
    async def scenario() -> None:
        service = await service_with(FakeInference())
        with pytest.raises(InvalidArgumentError, match="texts is empty"):
            await service.embed(call(), EmbedInput([]))
        with pytest.raises(InvalidArgumentError, match="5 texts in one request; the limit is 4"):
            await service.embed(call(), EmbedInput(["x"] * 5))

    asyncio.run(scenario())


def test_context_sets_are_sampled_deduplicated_and_per_tenant() -> None:
    async def scenario() -> None:
        inference = FakeInference()
        service = await service_with(inference)
        view = await service.create_context_set(
            call("a"), ContextSetInput("docs"), batches(["one"], ["two"])
        )
        assert view.summary.sampling == "oversampled"
        # N = 3 rows from 2 documents: each distinct document goes through stage 1 once
        assert sorted(inference.first_stage_documents) == [
            "search_document: one",
            "search_document: two",
        ]
        with pytest.raises(AlreadyExistsError):
            await service.create_context_set(call("a"), ContextSetInput("docs"), batches(["x"]))
        await service.create_context_set(call("b"), ContextSetInput("docs"), batches(["x"]))
        page = await service.list_context_sets(call("a"), page_size=10, page_token="")
        assert [s.name for s in page.summaries] == ["docs"]
        with pytest.raises(PermissionDeniedError):
            await service.list_context_sets(
                call("a"), page_size=10, page_token="", all_tenants=True
            )

    asyncio.run(scenario())


def test_a_set_built_by_another_model_is_refused() -> None:
    async def scenario() -> None:
        inference = FakeInference()
        model = ServedModel(inference, document_prefix="search_document: ")
        service = await service_with(inference, model)
        await service.create_context_set(call(), ContextSetInput("docs"), batches(["a"]))
        inference.fingerprint = "e" * 64
        await model.refresh()
        with pytest.raises(FailedPreconditionError, match="was built with model"):
            await service.embed(call(), EmbedInput(["q"], context_set="docs"))

    asyncio.run(scenario())


def test_near_zero_vectors_come_back_as_zeros_not_noise() -> None:
    from cde_server.domain.vectors import NEAR_ZERO_NORM, normalize_rows

    rows = np.array([[3.0, 4.0, 0.0, 0.0], [1.2e-7, -0.8e-7, 0.0, 0.0]], dtype=np.float32)
    unit = normalize_rows(rows)
    assert np.allclose(unit[0], [0.6, 0.8, 0.0, 0.0])
    assert not unit[1].any()
    assert np.linalg.norm(rows[1]) < NEAR_ZERO_NORM
