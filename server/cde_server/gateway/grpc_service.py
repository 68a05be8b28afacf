"""The cde.v1 EmbeddingService over gRPC: protobuf in, `EmbeddingService` operations, protobuf
out. Every call runs inside a call scope (auth, rate limit, status mapping, metrics, log).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc

from cde_server.errors import InvalidArgumentError, ResourceExhaustedError
from cde_server.gateway import wire
from cde_server.gateway.call_scope import ActiveCall, CallScopes
from cde_server.gateway.service import (
    ContextSetInput,
    ContextSetView,
    EmbeddingService,
    EmbedInput,
    EmbedResult,
)
from cde_server.gateway.status import status_of

RpcContext = Any  # grpc.aio.ServicerContext (grpc ships no type information)


class GrpcEmbeddingService(pb_grpc.EmbeddingServiceServicer):
    """gRPC servicer of cde.v1.EmbeddingService."""

    def __init__(self, service: EmbeddingService, calls: CallScopes) -> None:
        self._service = service
        self._calls = calls

    # --- embedding ------------------------------------------------------------------------
    async def Embed(self, request: pb.EmbedRequest, rpc_context: RpcContext) -> pb.EmbedResponse:
        """Embed up to max_texts_per_request texts."""
        async with self._calls.open("Embed", rpc_context) as call:
            result = await self._service.embed(call, embed_input(request))
            return embed_response(result, call.request_id)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedStreamRequest], rpc_context: RpcContext
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        """Bulk Embed: items run concurrently (bounded), answers come back in order."""
        async with (
            self._calls.open("EmbedStream", rpc_context) as call,
            self._service.stream_slot(call),
        ):
            window = asyncio.Semaphore(self._service.settings.stream_max_in_flight)
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
        self, sequence: int, request: pb.EmbedRequest, call: ActiveCall
    ) -> pb.EmbedStreamResponse:
        """One stream item: its response, or its error as ItemError."""
        started = time.perf_counter()
        try:
            result = await self._service.embed(call, embed_input(request))
        except Exception as exc:
            code, message = status_of(exc)
            self._calls.item_done("EmbedStreamItem", code.name, started)
            return pb.EmbedStreamResponse(
                sequence=sequence, error=pb.ItemError(code=code.value[0], message=message)
            )
        self._calls.item_done("EmbedStreamItem", "OK", started)
        return pb.EmbedStreamResponse(
            sequence=sequence, response=embed_response(result, call.request_id)
        )

    # --- context sets -------------------------------------------------------------------------
    async def CreateContextSet(
        self, request_iterator: AsyncIterator[pb.CreateContextSetRequest], rpc_context: RpcContext
    ) -> pb.CreateContextSetResponse:
        """Options, then documents: sample N, embed them with stage 1, store the set."""
        async with (
            self._calls.open("CreateContextSet", rpc_context) as call,
            self._service.stream_slot(call),
        ):
            options = await _read_options(request_iterator)
            view = await self._service.create_context_set(
                call, options, _document_batches(request_iterator)
            )
            return pb.CreateContextSetResponse(context_set=context_set_message(view))

    async def GetContextSet(
        self, request: pb.GetContextSetRequest, rpc_context: RpcContext
    ) -> pb.GetContextSetResponse:
        """Metadata, and on request the documents and dataset embeddings."""
        async with self._calls.open("GetContextSet", rpc_context) as call:
            view = await self._service.get_context_set(
                call,
                request.name,
                include_documents=request.include_documents,
                include_embeddings=request.include_embeddings,
            )
            response = pb.GetContextSetResponse(
                context_set=context_set_message(view),
                documents=view.documents,
                active_revision=view.active,
                revisions=wire.revisions(view.history) if view.history is not None else [],
            )
            if view.embeddings is not None:
                response.dataset_embeddings.CopyFrom(wire.matrix(view.embeddings))
            _refuse_oversized(response, self._service.settings.max_message_bytes)
            return response

    async def ListContextSets(
        self, request: pb.ListContextSetsRequest, rpc_context: RpcContext
    ) -> pb.ListContextSetsResponse:
        """One page of the tenant's sets (with all_tenants, an admin's: everyone's) by name."""
        async with self._calls.open("ListContextSets", rpc_context) as call:
            page = await self._service.list_context_sets(
                call,
                page_size=request.page_size,
                page_token=request.page_token,
                all_tenants=request.all_tenants,
            )
            return pb.ListContextSetsResponse(
                context_sets=[
                    wire.context_set(s, model_fingerprint=page.model_fingerprint)
                    for s in page.summaries
                ],
                next_page_token=page.next_page_token,
            )

    async def DeleteContextSet(
        self, request: pb.DeleteContextSetRequest, rpc_context: RpcContext
    ) -> pb.DeleteContextSetResponse:
        """Delete a set (NOT_FOUND if absent)."""
        async with self._calls.open("DeleteContextSet", rpc_context) as call:
            await self._service.delete_context_set(call, request.name)
            return pb.DeleteContextSetResponse()

    async def ActivateContextSet(
        self, request: pb.ActivateContextSetRequest, rpc_context: RpcContext
    ) -> pb.ActivateContextSetResponse:
        """Make a retained revision the one the bare name serves."""
        async with self._calls.open("ActivateContextSet", rpc_context) as call:
            view = await self._service.activate_context_set(call, request.name, request.revision)
            return pb.ActivateContextSetResponse(context_set=context_set_message(view))

    # --- prompts ------------------------------------------------------------------------------
    async def ListPrompts(
        self, request: pb.ListPromptsRequest, rpc_context: RpcContext
    ) -> pb.ListPromptsResponse:
        """Built-ins, then custom prompts by name."""
        async with self._calls.open("ListPrompts", rpc_context) as call:
            prompts = await self._service.list_prompts(call)
            return pb.ListPromptsResponse(prompts=[wire.prompt(p) for p in prompts])

    async def PutPrompt(
        self, request: pb.PutPromptRequest, rpc_context: RpcContext
    ) -> pb.PutPromptResponse:
        """Create or replace a custom prompt."""
        async with self._calls.open("PutPrompt", rpc_context) as call:
            prompt = await self._service.put_prompt(call, request.name, request.text)
            return pb.PutPromptResponse(prompt=wire.prompt(prompt))

    async def DeletePrompt(
        self, request: pb.DeletePromptRequest, rpc_context: RpcContext
    ) -> pb.DeletePromptResponse:
        """Delete a custom prompt."""
        async with self._calls.open("DeletePrompt", rpc_context) as call:
            await self._service.delete_prompt(call, request.name)
            return pb.DeletePromptResponse()

    # --- model --------------------------------------------------------------------------------
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, rpc_context: RpcContext
    ) -> pb.GetModelInfoResponse:
        """The served model and this gateway's limits."""
        async with self._calls.open("GetModelInfo", rpc_context):
            info = await self._service.model_info()
            return pb.GetModelInfoResponse(
                model_name=info.name,
                fingerprint=info.fingerprint,
                hidden_size=info.hidden_size,
                context_size=info.corpus_size,
                max_tokens=info.max_tokens,
                dtype=info.dtype,
                family=info.family,
                limits=pb.Limits(**self._service.advertised_limits()),
            )


def _refuse_oversized(response: pb.GetContextSetResponse, limit: int) -> None:
    """RESOURCE_EXHAUSTED, with what to ask for instead, when the answer exceeds the message
    limit (gRPC would fail it after the handler returned, counted and logged as OK)."""
    size = response.ByteSize()
    if size <= limit:
        return
    parts = [
        name
        for name, present in (
            ("documents", len(response.documents) > 0),
            ("embeddings", response.HasField("dataset_embeddings")),
        )
        if present
    ]
    advice = (
        "ask for include_documents and include_embeddings in separate calls, or "
        if len(parts) == 2
        else ""
    )
    raise ResourceExhaustedError(
        f"the context set with its {' and '.join(parts)} is {size} bytes, over the "
        f"{limit}-byte message limit; {advice}raise CDE_MAX_MESSAGE_BYTES (and the client's "
        "receive limit)"
    )


def embed_input(request: pb.EmbedRequest) -> EmbedInput:
    """The operation's arguments (unset normalize/truncate: true)."""
    return EmbedInput(
        texts=request.texts,
        prompt=request.prompt,
        context_set=request.context_set,
        normalize=request.normalize if request.HasField("normalize") else True,
        truncate=request.truncate if request.HasField("truncate") else True,
    )


def embed_response(result: EmbedResult, request_id: str) -> pb.EmbedResponse:
    """The wire form of an Embed result."""
    return pb.EmbedResponse(
        embeddings=wire.matrix(result.vectors),
        model_id=result.model_id,
        context_set=result.context_set,
        context_revision=result.context_revision,
        token_counts=result.token_counts,
        request_id=request_id,
    )


def context_set_message(view: ContextSetView) -> pb.ContextSet:
    """The wire form of a context set's metadata."""
    return wire.context_set(
        view.summary, model_fingerprint=view.model_fingerprint, active_revision=view.active
    )


async def _read_options(requests: AsyncIterator[pb.CreateContextSetRequest]) -> ContextSetInput:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgumentError("the stream is empty; send options first") from None
    if not first.HasField("options"):
        raise InvalidArgumentError("the first message must carry options")
    options = first.options
    return ContextSetInput(
        name=options.name,
        prompt=options.prompt,
        replace=options.replace,
        seed=options.seed if options.HasField("seed") else None,
        activate=options.activate if options.HasField("activate") else True,
        idempotency_key=options.idempotency_key,
    )


async def _document_batches(
    requests: AsyncIterator[pb.CreateContextSetRequest],
) -> AsyncIterator[Sequence[str]]:
    async for message in requests:
        if message.HasField("options"):
            raise InvalidArgumentError("options may only be sent once, in the first message")
        yield message.documents.documents
