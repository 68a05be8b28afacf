"""`AsyncCdeClient`: the asyncio client (grpc.aio), with the same methods as `CdeClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
import grpc.aio

from cde_client import _operations as _ops
from cde_client._calls import Rpc
from cde_client._client_core import ClientBase
from cde_client._flow import (
    END,
    Call,
    Driver,
    Emit,
    Flow,
    OpenStream,
    Receive,
    SendStream,
    Sleep,
    Step,
    Stream,
    StreamHandle,
    call_failure,
)
from cde_client.models import ContextSet, EmbedResult, HealthStatus, ModelInfo, Prompt

T = TypeVar("T")


class AsyncCdeClient(ClientBase):
    """Asyncio client of the cde-serve gateway; one gRPC channel per client.

    Use it as an async context manager, or `await close()`. The channel is opened on the
    first call, in the running event loop (a client used from another loop later opens a
    new channel there). Failed calls raise `CdeError` subclasses (`cde_client.errors`).
    """

    def _connect(self) -> None:
        self._channel: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._methods: dict[str, Any] = {}

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._methods.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- transport ------------------------------------------------------------------------

    def _method(self, rpc: Rpc[Any, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            # A grpc.aio channel belongs to the loop it was made in: a client reused from
            # another loop (say, a second asyncio.run) gets a fresh channel.
            self._channel = self._core.open_channel(grpc.aio)
            self._loop = loop
            self._methods.clear()
        method = self._methods.get(rpc.path)
        if method is None:
            method = getattr(self._channel, rpc.kind.value)(
                rpc.path,
                request_serializer=rpc.serializer,
                response_deserializer=rpc.deserializer,
            )
            self._methods[rpc.path] = method
        return method

    async def _perform(self, step: Step, streams: list[Any]) -> Any:
        metadata = self._core.metadata
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Receive):
            handle = step.stream
            try:
                response = await handle.call.read()
            except grpc.RpcError as exc:
                raise call_failure(exc, handle.requests) from None
            return END if response is grpc.aio.EOF else response
        method = self._method(step.rpc)
        if isinstance(step, Call):
            try:
                return await method(step.request, timeout=step.timeout, metadata=metadata)
            except grpc.RpcError as exc:
                raise call_failure(exc, None) from None
        if isinstance(step, SendStream):
            try:
                return await method(
                    step.requests.aiterate(), timeout=step.timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                raise call_failure(exc, step.requests) from None
        if isinstance(step, OpenStream):
            call = method(step.requests.aiterate(), timeout=step.timeout, metadata=metadata)
            streams.append(call)
            return StreamHandle(call, step.requests)
        raise TypeError(f"unknown step {step!r}")

    async def _run(self, flow: Flow[T]) -> T:
        driver = Driver(flow)
        streams: list[Any] = []
        try:
            while (step := driver.next_step()) is not None:
                if isinstance(step, Emit):
                    raise TypeError("an operation run for one value emitted items")
                try:
                    driver.succeeded(await self._perform(step, streams))
                except Exception as exc:
                    driver.failed(exc)
            return cast(T, driver.result)
        finally:
            driver.close()
            for call in streams:
                call.cancel()

    async def _iterate(self, stream: Stream[T]) -> AsyncIterator[T]:
        driver: Driver[None] = Driver(stream)
        streams: list[Any] = []
        try:
            while (step := driver.next_step()) is not None:
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    driver.succeeded(await self._perform(step, streams))
                except Exception as exc:
                    driver.failed(exc)
        finally:
            driver.close()
            for call in streams:
                call.cancel()

    # --- generated by cde_client._twins from cde_client._operations: do not edit below ---

    async def embed(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        context: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Embed `texts` (one row each, in order) with the `prompt` prefix and `context` set.

        `prompt`: a prompt name ("query", "document", ... ; None: "document"). `context`: a
        context-set name (None: the built-in default context). `normalize`: L2-normalize rows.
        `truncate`: cut texts longer than the model's limit (False: such a text is an
        InvalidArgument error). Inputs larger than the server's limits are sent in several
        calls, transparently, and the rows come back in input order. `timeout`: seconds for
        each call, retries included (None: the client's default).
        """
        return await self._run(
            _ops.embed(
                self._core,
                texts,
                prompt=prompt,
                context=context,
                normalize=normalize,
                truncate=truncate,
                timeout=timeout,
            )
        )

    async def embed_queries(
        self,
        texts: Sequence[str],
        *,
        context: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Embed search queries: `embed` with the "query" prompt."""
        return await self._run(
            _ops.embed_queries(
                self._core,
                texts,
                context=context,
                normalize=normalize,
                truncate=truncate,
                timeout=timeout,
            )
        )

    async def embed_documents(
        self,
        texts: Sequence[str],
        *,
        context: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        """Embed documents: `embed` with the "document" prompt."""
        return await self._run(
            _ops.embed_documents(
                self._core,
                texts,
                context=context,
                normalize=normalize,
                truncate=truncate,
                timeout=timeout,
            )
        )

    def embed_stream(
        self,
        batches: Iterable[Sequence[str]] | AsyncIterable[Sequence[str]],
        *,
        prompt: str | None = None,
        context: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[EmbedResult]:
        """Embed many batches of texts over one stream (bulk jobs); one result per batch, in order.

        Batches are read lazily as the stream makes progress, and each may be of any size
        (large ones are split and put back together). A batch the server rejects raises its
        error when its turn comes and ends the stream. `timeout`: seconds for the whole stream
        (None: no limit).
        """
        return self._iterate(
            _ops.embed_stream(
                self._core,
                batches,
                prompt=prompt,
                context=context,
                normalize=normalize,
                truncate=truncate,
                timeout=timeout,
            )
        )

    async def create_context_set(
        self,
        name: str,
        documents: Iterable[str] | AsyncIterable[str],
        *,
        replace: bool = False,
        activate: bool = True,
        prompt: str | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
        progress: bool = False,
        timeout: float | None = None,
    ) -> ContextSet:
        """Create the context set `name` from a sample of your corpus, streamed in chunks.

        `documents` is read lazily, so it may be a generator over a large file. The server
        keeps a seeded sample of exactly the model's context size (oversampling a small
        corpus); `ContextSet.sampling` says which happened. `replace`: replace an existing
        set with a new revision (else AlreadyExists); `activate=False` builds it beside the
        active one (embed with "name@revision", then `activate_context_set`); a new set's first
        revision is always active. `prompt`: prompt of the context documents
        (None: "document"). `seed`: sampling seed (None: 42). `progress`: show a progress bar
        (tqdm if installed, else lines on stderr). `timeout`: seconds for the whole upload
        and build, retries included (None: no limit).

        Retried like the other calls (on UNAVAILABLE): every try carries the same
        `idempotency_key` (None: a fresh random one for this call), so a try that was stored
        although its answer was lost is returned, never built twice. The documents read so far
        are kept in memory for the retries until the call returns.
        """
        return await self._run(
            _ops.create_context_set(
                self._core,
                name,
                documents,
                replace=replace,
                activate=activate,
                prompt=prompt,
                seed=seed,
                idempotency_key=idempotency_key,
                progress=progress,
                timeout=timeout,
            )
        )

    async def get_context_set(
        self,
        name: str,
        *,
        include_documents: bool = False,
        include_embeddings: bool = False,
        timeout: float | None = None,
    ) -> ContextSet:
        """Describe the context set `name` (its active revision; "name@N": revision N) and list
        its retained revisions, optionally with the documents and dataset embeddings.
        """
        return await self._run(
            _ops.get_context_set(
                self._core,
                name,
                include_documents=include_documents,
                include_embeddings=include_embeddings,
                timeout=timeout,
            )
        )

    def list_context_sets(
        self,
        *,
        page_size: int = 0,
        all_tenants: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[ContextSet]:
        """All context sets in name order, fetched page by page (`page_size` 0: the server's).

        `all_tenants`: every tenant's sets, named "tenant/name" (needs an admin API key, else
        PermissionDenied).
        """
        return self._iterate(
            _ops.list_context_sets(
                self._core,
                page_size=page_size,
                all_tenants=all_tenants,
                timeout=timeout,
            )
        )

    async def delete_context_set(
        self,
        name: str,
        *,
        timeout: float | None = None,
    ) -> None:
        """Delete the context set `name`, or one inactive revision as "name@N" (NotFound if there
        is none; FailedPrecondition for the active revision: activate another first).
        """
        return await self._run(
            _ops.delete_context_set(
                self._core,
                name,
                timeout=timeout,
            )
        )

    async def activate_context_set(
        self,
        name: str,
        revision: int,
        *,
        timeout: float | None = None,
    ) -> ContextSet:
        """Make the retained `revision` the one that `name` serves, atomically for every gateway
        (NotFound if it was pruned or deleted).
        """
        return await self._run(
            _ops.activate_context_set(
                self._core,
                name,
                revision,
                timeout=timeout,
            )
        )

    async def list_prompts(
        self,
        *,
        timeout: float | None = None,
    ) -> list[Prompt]:
        """Built-in prompts first, then custom prompts by name."""
        return await self._run(
            _ops.list_prompts(
                self._core,
                timeout=timeout,
            )
        )

    async def put_prompt(
        self,
        name: str,
        text: str,
        *,
        timeout: float | None = None,
    ) -> Prompt:
        """Create or replace the custom prompt `name` with prefix `text`; returns it as stored."""
        return await self._run(
            _ops.put_prompt(
                self._core,
                name,
                text,
                timeout=timeout,
            )
        )

    async def delete_prompt(
        self,
        name: str,
        *,
        timeout: float | None = None,
    ) -> None:
        """Delete the custom prompt `name` (NotFound if there is none)."""
        return await self._run(
            _ops.delete_prompt(
                self._core,
                name,
                timeout=timeout,
            )
        )

    async def model_info(
        self,
        *,
        timeout: float | None = None,
    ) -> ModelInfo:
        """The served model (name, fingerprint, sizes) and the server's limits."""
        return await self._run(
            _ops.model_info(
                self._core,
                timeout=timeout,
            )
        )

    async def health(
        self,
        service: str = "",
        *,
        timeout: float | None = None,
    ) -> HealthStatus:
        """The standard gRPC health status of `service` ("": the server as a whole)."""
        return await self._run(
            _ops.health(
                self._core,
                service,
                timeout=timeout,
            )
        )

    # --- end of generated methods ---
