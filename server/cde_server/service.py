"""The cde.v1 EmbeddingService: request validation and orchestration of prompts, context sets,
the store and Triton. Transport concerns (status mapping, metrics, logs) live in call_scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc

from cde_server import context_sets, pagination, wire
from cde_server.auth import Authenticator
from cde_server.call_scope import Call, CallScopes
from cde_server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from cde_server.limits import tenant_limiter
from cde_server.metrics import GatewayMetrics
from cde_server.names import validate_context_set_name
from cde_server.prompts import PromptRegistry
from cde_server.served_model import ServedModel
from cde_server.settings import GatewaySettings
from cde_server.status import status_of
from cde_server.stores.base import Store
from cde_server.tenancy import TenantStore
from cde_server.triton_backend import ContextRef
from cde_server.triton_pool import TritonPool

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)
FloatMatrix = npt.NDArray[np.float32]

_NORM_FLOOR = 1e-12


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of one Embed request, before conversion to the wire."""

    vectors: FloatMatrix
    model_id: str
    context_set: str
    context_revision: int
    token_counts: Sequence[int]


class EmbeddingService(pb_grpc.EmbeddingServiceServicer):
    """gRPC servicer of cde.v1.EmbeddingService."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        backend: TritonPool,
        store: Store,
        model: ServedModel,
        metrics: GatewayMetrics,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._store = store
        self._model = model
        self._metrics = metrics
        authenticator = authenticator or Authenticator(None)
        self._limiter = tenant_limiter(settings, authenticator)
        self._calls = CallScopes(metrics, authenticator=authenticator, limiter=self._limiter)
        self._open_streams = 0

    @property
    def calls(self) -> CallScopes:
        """This service's call scopes (the transport's interceptors count calls with them)."""
        return self._calls

    def _store_of(self, call: Call) -> TenantStore:
        """The store as the call's tenant sees it (its own context sets and prompts)."""
        return TenantStore(self._store, call.tenant)

    def _prompts_of(self, call: Call) -> PromptRegistry:
        """Built-in prompts and the call's tenant's custom prompts."""
        return PromptRegistry(self._store_of(call))

    # --- embedding ------------------------------------------------------------------------
    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """Embed up to max_texts_per_request texts."""
        async with self._calls.open("Embed", context) as call:
            result = await self._embed(request, call)
            return self._embed_response(result, call.request_id)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedStreamRequest], context: Context
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        """Bulk Embed: items run concurrently (bounded), answers come back in order."""
        async with self._calls.open("EmbedStream", context) as call, self._stream_slot(call):
            window = asyncio.Semaphore(self._settings.stream_max_in_flight)
            pending: asyncio.Queue[asyncio.Task[pb.EmbedStreamResponse] | None] = asyncio.Queue()

            async def read() -> None:
                """One task per item, at most `window` unanswered at a time (flow control)."""
                try:
                    sequence = 0
                    async for item in request_iterator:
                        await window.acquire()
                        work = self._stream_item(sequence, item.request, call)
                        pending.put_nowait(asyncio.create_task(work))
                        sequence += 1
                finally:
                    pending.put_nowait(None)

            reader = asyncio.create_task(read())
            try:
                while (task := await pending.get()) is not None:
                    yield await task
                    window.release()
                await reader  # re-raises a broken request stream
            finally:
                reader.cancel()
                while not pending.empty():
                    if (leftover := pending.get_nowait()) is not None:
                        leftover.cancel()

    async def _stream_item(
        self, sequence: int, request: pb.EmbedRequest, call: Call
    ) -> pb.EmbedStreamResponse:
        """One stream item: its response, or its error as ItemError."""
        started = time.perf_counter()
        try:
            result = await self._embed(request, call)
        except Exception as exc:
            code, message = status_of(exc)
            self._calls.item_done("EmbedStreamItem", code.name, started)
            return pb.EmbedStreamResponse(
                sequence=sequence, error=pb.ItemError(code=code.value[0], message=message)
            )
        self._calls.item_done("EmbedStreamItem", "OK", started)
        return pb.EmbedStreamResponse(
            sequence=sequence, response=self._embed_response(result, call.request_id)
        )

    async def _embed(self, request: pb.EmbedRequest, call: Call) -> EmbedResult:
        """Validate, resolve prompt and context, run the second stage, normalize."""
        timeout_s = call.timeout_s()
        texts = self._checked_texts(request.texts)
        prompt = await self._prompts_of(call).resolve(request.prompt)
        info = await self._model.info()
        context, revision = await self._context(
            request.context_set, info.fingerprint, self._store_of(call)
        )
        truncate = request.truncate if request.HasField("truncate") else True
        encoded = await self._backend.embed(
            [prompt.apply(text) for text in texts],
            context,
            max_tokens=info.max_tokens,
            allow_truncation=truncate,
            timeout_s=timeout_s,
        )
        self._metrics.embedded("second", len(texts), int(encoded.token_counts.sum()))
        vectors = encoded.vectors
        if not request.HasField("normalize") or request.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, _NORM_FLOOR)
        return EmbedResult(
            vectors=vectors.astype(np.float32, copy=False),
            model_id=info.fingerprint,
            context_set=request.context_set,
            context_revision=revision,
            token_counts=[int(count) for count in encoded.token_counts],
        )

    def _checked_texts(self, texts: Sequence[str]) -> Sequence[str]:
        limit = self._settings.max_texts_per_request
        if not texts:
            raise InvalidArgumentError(f"texts is empty; send 1 to {limit} texts")
        if len(texts) > limit:
            raise InvalidArgumentError(f"{len(texts)} texts in one request; the limit is {limit}")
        max_bytes = self._settings.max_text_bytes
        for index, text in enumerate(texts):
            if len(text) * 4 > max_bytes and (size := len(text.encode("utf-8"))) > max_bytes:
                raise InvalidArgumentError(
                    f"text {index} is {size} bytes; the limit is {max_bytes}"
                )
        return texts

    async def _context(
        self, name: str, fingerprint: str, store: TenantStore
    ) -> tuple[ContextRef, int]:
        """The context to embed with and its revision ("" → the built-in default, revision 0)."""
        if not name:
            default, _ = await self._model.default_context()
            return default, 0
        validate_context_set_name(name)
        summary = await store.get_summary(name)
        context_sets.require_compatible(summary, fingerprint)

        async def load() -> FloatMatrix:
            stored = await store.get_context_set(name)
            if stored.context_id != summary.context_id:
                raise UnavailableError(
                    f'context set "{name}" was replaced during the request; retry'
                )
            return stored.embeddings

        return ContextRef(summary.context_id, load), summary.revision

    @staticmethod
    def _embed_response(result: EmbedResult, request_id: str) -> pb.EmbedResponse:
        return pb.EmbedResponse(
            embeddings=wire.matrix(result.vectors),
            model_id=result.model_id,
            context_set=result.context_set,
            context_revision=result.context_revision,
            token_counts=result.token_counts,
            request_id=request_id,
        )

    # --- context sets -------------------------------------------------------------------------
    async def CreateContextSet(
        self, request_iterator: AsyncIterator[pb.CreateContextSetRequest], context: Context
    ) -> pb.CreateContextSetResponse:
        """Options, then documents: sample N, embed them with stage 1, store the set."""
        async with (
            self._calls.open("CreateContextSet", context) as call,
            self._stream_slot(call),
        ):
            store = self._store_of(call)
            options = await self._read_options(request_iterator)
            name = validate_context_set_name(options.name)
            prompt = await self._prompts_of(call).resolve(options.prompt)
            if not options.replace:
                await self._refuse_existing(name, store)
            collector = context_sets.DocumentCollector(
                max_documents=self._settings.max_context_documents,
                max_document_bytes=self._settings.max_text_bytes,
                max_total_bytes=self._settings.max_context_bytes,
            )
            async for message in request_iterator:
                if message.HasField("options"):
                    raise InvalidArgumentError(
                        "options may only be sent once, in the first message"
                    )
                collector.add(message.documents.documents)
            if not collector.documents:
                raise InvalidArgumentError("no context documents were sent; send at least 1")
            info = await self._model.info()
            seed = options.seed if options.HasField("seed") else context_sets.DEFAULT_SEED
            documents, sampling = context_sets.sample_documents(
                collector.documents, info.corpus_size, seed
            )
            embeddings = await self._embed_documents([prompt.apply(d) for d in documents])
            record = context_sets.build_context_set(
                name=name,
                prompt=prompt.name,
                documents=documents,
                embeddings=embeddings,
                source_document_count=len(collector.documents),
                sampling=sampling,
                model_fingerprint=info.fingerprint,
            )
            stored = await store.create_context_set(record, replace=options.replace)
            return pb.CreateContextSetResponse(
                context_set=wire.context_set(stored.summary(), model_fingerprint=info.fingerprint)
            )

    @staticmethod
    async def _read_options(
        requests: AsyncIterator[pb.CreateContextSetRequest],
    ) -> pb.ContextSetOptions:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise InvalidArgumentError("the stream is empty; send options first") from None
        if not first.HasField("options"):
            raise InvalidArgumentError("the first message must carry options")
        return first.options

    @staticmethod
    async def _refuse_existing(name: str, store: TenantStore) -> None:
        """Fail fast, before the documents are sent (the store still decides atomically)."""
        with contextlib.suppress(NotFoundError):
            await store.get_summary(name)
            raise AlreadyExistsError(
                f'context set "{name}" already exists; use replace to rebuild it'
            )

    async def _embed_documents(self, documents: Sequence[str]) -> FloatMatrix:
        """Stage-1 embeddings, each distinct document computed once (oversampling repeats)."""
        unique = list(dict.fromkeys(documents))
        encoded = await self._backend.embed_context(unique)
        self._metrics.embedded("first", len(unique), int(encoded.token_counts.sum()))
        row_of = {document: row for row, document in enumerate(unique)}
        return encoded.vectors[[row_of[document] for document in documents]]

    async def GetContextSet(
        self, request: pb.GetContextSetRequest, context: Context
    ) -> pb.GetContextSetResponse:
        """Metadata, and on request the documents and dataset embeddings."""
        async with self._calls.open("GetContextSet", context) as call:
            store = self._store_of(call)
            name = validate_context_set_name(request.name)
            fingerprint = (await self._model.info()).fingerprint
            if not (request.include_documents or request.include_embeddings):
                summary = await store.get_summary(name)
                return pb.GetContextSetResponse(
                    context_set=wire.context_set(summary, model_fingerprint=fingerprint)
                )
            stored = await store.get_context_set(name, with_documents=request.include_documents)
            response = pb.GetContextSetResponse(
                context_set=wire.context_set(stored.summary(), model_fingerprint=fingerprint),
                documents=stored.documents if request.include_documents else (),
            )
            if request.include_embeddings:
                response.dataset_embeddings.CopyFrom(wire.matrix(stored.embeddings))
            return response

    async def ListContextSets(
        self, request: pb.ListContextSetsRequest, context: Context
    ) -> pb.ListContextSetsResponse:
        """One page of the tenant's sets (with all_tenants, an admin's: everyone's) by name."""
        async with self._calls.open("ListContextSets", context) as call:
            store: Store = self._store_of(call)
            if request.all_tenants:
                if not call.admin:
                    self._calls.rejected("permission_denied")
                    raise PermissionDeniedError("all_tenants needs an admin API key")
                store = self._store  # names come back as "tenant/name"
            summaries, next_token = await pagination.list_page(
                store, requested_size=request.page_size, page_token=request.page_token
            )
            fingerprint = await self._fingerprint_if_known()
            return pb.ListContextSetsResponse(
                context_sets=[
                    wire.context_set(s, model_fingerprint=fingerprint) for s in summaries
                ],
                next_page_token=next_token,
            )

    async def DeleteContextSet(
        self, request: pb.DeleteContextSetRequest, context: Context
    ) -> pb.DeleteContextSetResponse:
        """Delete a set (NOT_FOUND if absent)."""
        async with self._calls.open("DeleteContextSet", context) as call:
            name = validate_context_set_name(request.name)
            await self._store_of(call).delete_context_set(name)
            return pb.DeleteContextSetResponse()

    # --- prompts ------------------------------------------------------------------------------
    async def ListPrompts(
        self, request: pb.ListPromptsRequest, context: Context
    ) -> pb.ListPromptsResponse:
        """Built-ins, then custom prompts by name."""
        async with self._calls.open("ListPrompts", context) as call:
            prompts = await self._prompts_of(call).list()
            return pb.ListPromptsResponse(prompts=[wire.prompt(p) for p in prompts])

    async def PutPrompt(
        self, request: pb.PutPromptRequest, context: Context
    ) -> pb.PutPromptResponse:
        """Create or replace a custom prompt."""
        async with self._calls.open("PutPrompt", context) as call:
            prompt = await self._prompts_of(call).put(request.name, request.text)
            return pb.PutPromptResponse(prompt=wire.prompt(prompt))

    async def DeletePrompt(
        self, request: pb.DeletePromptRequest, context: Context
    ) -> pb.DeletePromptResponse:
        """Delete a custom prompt."""
        async with self._calls.open("DeletePrompt", context) as call:
            await self._prompts_of(call).delete(request.name)
            return pb.DeletePromptResponse()

    # --- model --------------------------------------------------------------------------------
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.GetModelInfoResponse:
        """The served model and this gateway's limits."""
        async with self._calls.open("GetModelInfo", context):
            info = await self._model.info()
            s = self._settings
            return pb.GetModelInfoResponse(
                model_name=info.name,
                fingerprint=info.fingerprint,
                hidden_size=info.hidden_size,
                context_size=info.corpus_size,
                max_tokens=info.max_tokens,
                dtype=info.dtype,
                limits=pb.Limits(
                    max_texts_per_request=s.max_texts_per_request,
                    max_text_bytes=s.max_text_bytes,
                    max_message_bytes=s.max_message_bytes,
                    max_context_documents=s.max_context_documents,
                    max_concurrent_streams=s.max_concurrent_streams,
                    max_context_bytes=s.max_context_bytes,
                ),
            )

    # --- helpers ------------------------------------------------------------------------------
    async def _fingerprint_if_known(self) -> str:
        """The served model's fingerprint; "" when Triton cannot say (listing still works)."""
        try:
            return (await self._model.info()).fingerprint
        except UnavailableError:
            cached = self._model.cached_info
            return cached.fingerprint if cached is not None else ""

    @contextlib.asynccontextmanager
    async def _stream_slot(self, call: Call) -> AsyncIterator[None]:
        """Count a streaming call against max_concurrent_streams and its tenant's limit
        (RESOURCE_EXHAUSTED beyond either)."""
        limit = self._settings.max_concurrent_streams
        if self._open_streams >= limit:
            self._calls.rejected("streams")
            raise ResourceExhaustedError(
                f"{limit} streams are open (the limit); retry later", retry_after=1.0
            )
        try:
            self._limiter.acquire_stream(call.tenant)
        except ResourceExhaustedError:
            self._calls.rejected("tenant_streams")
            raise
        self._open_streams += 1
        self._metrics.open_streams.inc()
        try:
            yield
        finally:
            self._limiter.release_stream(call.tenant)
            self._open_streams -= 1
            self._metrics.open_streams.dec()
