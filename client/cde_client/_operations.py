"""Every public client method, written once for both clients (see `_flow`).

Each public function here becomes a method of `CdeClient` and of `AsyncCdeClient` with the
same signature (minus `core`) and docstring; `_twins` writes those methods. A function
returning `Flow[T]` becomes `def ...-> T` / `async def ... -> T`; one returning `Stream[T]`
becomes `def ... -> Iterator[T]` / `def ... -> AsyncIterator[T]`. The aliases `Documents`
and `Batches` are plain iterables for the sync client and may also be async iterables for
the async one.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Sequence, Sized
from typing import Any, TypeAlias, TypeVar, cast

from cde.v1 import embedding_service_pb2 as pb
from google.protobuf.message import Message

from cde_client import _calls as calls
from cde_client import conversions
from cde_client._calls import Rpc
from cde_client._chunking import embed_spans
from cde_client._client_core import ClientCore
from cde_client._encoders import DocumentEncoder, EmbedStreamEncoder, StreamAssembler, text_list
from cde_client._flow import (
    END,
    Call,
    Emit,
    Flow,
    OpenStream,
    Receive,
    RequestSource,
    SendStream,
    Sleep,
    Step,
    Stream,
)
from cde_client._progress import open_progress
from cde_client._replay import Replayable
from cde_client.errors import CdeError
from cde_client.models import ContextSet, EmbedResult, HealthStatus, ModelInfo, Prompt

ResponseT = TypeVar("ResponseT", bound=Message)

Documents: TypeAlias = Iterable[str] | AsyncIterable[str]
Batches: TypeAlias = Iterable[Sequence[str]] | AsyncIterable[Sequence[str]]

QUERY_PROMPT = "query"
DOCUMENT_PROMPT = "document"

PUBLIC = (
    "embed",
    "embed_queries",
    "embed_documents",
    "embed_stream",
    "create_context_set",
    "get_context_set",
    "list_context_sets",
    "delete_context_set",
    "activate_context_set",
    "list_prompts",
    "put_prompt",
    "delete_prompt",
    "model_info",
    "health",
)
"""The operations that become client methods, in the order they appear there."""


# --- building blocks --------------------------------------------------------------------


def _retried(
    core: ClientCore,
    rpc: Rpc[Any, Any],
    attempt: Callable[[float | None], Step],
    deadline: float | None,
) -> Flow[Any]:
    """Run `attempt(time left)` until it succeeds, retrying per the client's policy (if `rpc`
    is safe to repeat) while time is left before `deadline` (monotonic; None: no limit)."""
    for number in itertools.count(1):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return (yield attempt(left))
        except CdeError as error:
            left = None if deadline is None else deadline - time.monotonic()
            delay = core.retry.delay_before_retry(
                error, number, idempotent=rpc.idempotent, time_left=left, rng=core.rng
            )
            if delay is None:
                raise
        yield Sleep(delay)
    raise AssertionError("unreachable")


def _deadline(budget: float | None) -> float | None:
    """The monotonic time `budget` seconds from now (None: no limit)."""
    return None if budget is None else time.monotonic() + budget


def _unary(
    core: ClientCore, rpc: Rpc[Any, ResponseT], request: Message, timeout: float | None
) -> Flow[ResponseT]:
    """One unary call, retried per the client's policy while time is left."""
    deadline = _deadline(core.call_timeout(timeout))
    response = yield from _retried(core, rpc, lambda left: Call(rpc, request, left), deadline)
    return cast(ResponseT, response)


def _cached_model_info(core: ClientCore) -> Flow[ModelInfo]:
    """The model info, from the server the first time (its limits plan request sizes)."""
    if core.model_info is None:
        response = yield from _unary(core, calls.GET_MODEL_INFO, pb.GetModelInfoRequest(), None)
        core.model_info = conversions.model_info(response)
    return core.model_info


# --- embeddings ---------------------------------------------------------------------------


def embed(
    core: ClientCore,
    texts: Sequence[str],
    *,
    prompt: str | None = None,
    context: str | None = None,
    normalize: bool = True,
    truncate: bool = True,
    timeout: float | None = None,
) -> Flow[EmbedResult]:
    """Embed `texts` (one row each, in order) with the `prompt` prefix and `context` set.

    `prompt`: a prompt name ("query", "document", ... ; None: "document"). `context`: a
    context-set name (None: the built-in default context). `normalize`: L2-normalize rows.
    `truncate`: cut texts longer than the model's limit (False: such a text is an
    InvalidArgument error). Inputs larger than the server's limits are sent in several
    calls, transparently, and the rows come back in input order. `timeout`: seconds for
    each call, retries included (None: the client's default).
    """
    items = text_list(texts)
    info = yield from _cached_model_info(core)
    parts = []
    for start, stop in embed_spans(items, info):
        request = conversions.embed_request(
            items[start:stop],
            prompt=prompt,
            context=context,
            normalize=normalize,
            truncate=truncate,
        )
        response = yield from _unary(core, calls.EMBED, request, timeout)
        parts.append(conversions.embed_result(response))
    return conversions.merge_embed_results(parts)


def embed_queries(
    core: ClientCore,
    texts: Sequence[str],
    *,
    context: str | None = None,
    normalize: bool = True,
    truncate: bool = True,
    timeout: float | None = None,
) -> Flow[EmbedResult]:
    """Embed search queries: `embed` with the "query" prompt."""
    return (
        yield from embed(
            core,
            texts,
            prompt=QUERY_PROMPT,
            context=context,
            normalize=normalize,
            truncate=truncate,
            timeout=timeout,
        )
    )


def embed_documents(
    core: ClientCore,
    texts: Sequence[str],
    *,
    context: str | None = None,
    normalize: bool = True,
    truncate: bool = True,
    timeout: float | None = None,
) -> Flow[EmbedResult]:
    """Embed documents: `embed` with the "document" prompt."""
    return (
        yield from embed(
            core,
            texts,
            prompt=DOCUMENT_PROMPT,
            context=context,
            normalize=normalize,
            truncate=truncate,
            timeout=timeout,
        )
    )


def embed_stream(
    core: ClientCore,
    batches: Batches,
    *,
    prompt: str | None = None,
    context: str | None = None,
    normalize: bool = True,
    truncate: bool = True,
    timeout: float | None = None,
) -> Stream[EmbedResult]:
    """Embed many batches of texts over one stream (bulk jobs); one result per batch, in order.

    Batches are read lazily as the stream makes progress, and each may be of any size
    (large ones are split and put back together). A batch the server rejects raises its
    error when its turn comes and ends the stream. `timeout`: seconds for the whole stream
    (None: no limit).
    """
    info = yield from _cached_model_info(core)
    encoder = EmbedStreamEncoder(
        info, prompt=prompt, context=context, normalize=normalize, truncate=truncate
    )
    stream = yield OpenStream(calls.EMBED_STREAM, RequestSource(batches, encoder), timeout)
    assembler = StreamAssembler(encoder)
    while (response := (yield Receive(stream))) is not END:
        for outcome in assembler.accept(response):
            if isinstance(outcome, CdeError):
                raise outcome
            yield Emit(outcome)
    assembler.finish()


# --- context sets -------------------------------------------------------------------------


def create_context_set(
    core: ClientCore,
    name: str,
    documents: Documents,
    *,
    replace: bool = False,
    activate: bool = True,
    prompt: str | None = None,
    seed: int | None = None,
    idempotency_key: str | None = None,
    progress: bool = False,
    timeout: float | None = None,
) -> Flow[ContextSet]:
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
    if isinstance(documents, str | bytes):
        raise TypeError("documents must be an iterable of strings, not a single string")
    info = yield from _cached_model_info(core)
    total = len(documents) if isinstance(documents, Sized) else None
    bar = open_progress(progress, total, f"context set {name}")
    replayable = Replayable(documents)
    try:
        options = conversions.context_set_options(
            name,
            replace=replace,
            prompt=prompt,
            seed=seed,
            activate=activate,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )

        def attempt(left: float | None) -> Step:
            source = RequestSource(replayable, DocumentEncoder(options, info, bar))
            return SendStream(calls.CREATE_CONTEXT_SET, source, left)

        response = yield from _retried(core, calls.CREATE_CONTEXT_SET, attempt, _deadline(timeout))
    finally:
        bar.close()
    return conversions.context_set(cast(pb.CreateContextSetResponse, response).context_set)


def get_context_set(
    core: ClientCore,
    name: str,
    *,
    include_documents: bool = False,
    include_embeddings: bool = False,
    timeout: float | None = None,
) -> Flow[ContextSet]:
    """Describe the context set `name` (its active revision; "name@N": revision N) and list
    its retained revisions, optionally with the documents and dataset embeddings."""
    request = pb.GetContextSetRequest(
        name=name, include_documents=include_documents, include_embeddings=include_embeddings
    )
    response = yield from _unary(core, calls.GET_CONTEXT_SET, request, timeout)
    return conversions.context_set_details(
        response, include_documents=include_documents, include_embeddings=include_embeddings
    )


def list_context_sets(
    core: ClientCore,
    *,
    page_size: int = 0,
    all_tenants: bool = False,
    timeout: float | None = None,
) -> Stream[ContextSet]:
    """All context sets in name order, fetched page by page (`page_size` 0: the server's).

    `all_tenants`: every tenant's sets, named "tenant/name" (needs an admin API key, else
    PermissionDenied).
    """
    token = ""
    while True:
        request = pb.ListContextSetsRequest(
            page_size=page_size, page_token=token, all_tenants=all_tenants
        )
        response = yield from _unary(core, calls.LIST_CONTEXT_SETS, request, timeout)
        for message in response.context_sets:
            yield Emit(conversions.context_set(message))
        token = response.next_page_token
        if not token:
            return


def delete_context_set(core: ClientCore, name: str, *, timeout: float | None = None) -> Flow[None]:
    """Delete the context set `name`, or one inactive revision as "name@N" (NotFound if there
    is none; FailedPrecondition for the active revision: activate another first)."""
    request = pb.DeleteContextSetRequest(name=name)
    yield from _unary(core, calls.DELETE_CONTEXT_SET, request, timeout)


def activate_context_set(
    core: ClientCore, name: str, revision: int, *, timeout: float | None = None
) -> Flow[ContextSet]:
    """Make the retained `revision` the one that `name` serves, atomically for every gateway
    (NotFound if it was pruned or deleted)."""
    request = pb.ActivateContextSetRequest(name=name, revision=revision)
    response = yield from _unary(core, calls.ACTIVATE_CONTEXT_SET, request, timeout)
    return conversions.context_set(response.context_set)


# --- prompts and service info -------------------------------------------------------------


def list_prompts(core: ClientCore, *, timeout: float | None = None) -> Flow[list[Prompt]]:
    """Built-in prompts first, then custom prompts by name."""
    response = yield from _unary(core, calls.LIST_PROMPTS, pb.ListPromptsRequest(), timeout)
    return [conversions.prompt(message) for message in response.prompts]


def put_prompt(
    core: ClientCore, name: str, text: str, *, timeout: float | None = None
) -> Flow[Prompt]:
    """Create or replace the custom prompt `name` with prefix `text`; returns it as stored."""
    request = pb.PutPromptRequest(name=name, text=text)
    response = yield from _unary(core, calls.PUT_PROMPT, request, timeout)
    return conversions.prompt(response.prompt)


def delete_prompt(core: ClientCore, name: str, *, timeout: float | None = None) -> Flow[None]:
    """Delete the custom prompt `name` (NotFound if there is none)."""
    request = pb.DeletePromptRequest(name=name)
    yield from _unary(core, calls.DELETE_PROMPT, request, timeout)


def model_info(core: ClientCore, *, timeout: float | None = None) -> Flow[ModelInfo]:
    """The served model (name, fingerprint, sizes) and the server's limits."""
    response = yield from _unary(core, calls.GET_MODEL_INFO, pb.GetModelInfoRequest(), timeout)
    core.model_info = conversions.model_info(response)
    return core.model_info


def health(
    core: ClientCore, service: str = "", *, timeout: float | None = None
) -> Flow[HealthStatus]:
    """The standard gRPC health status of `service` ("": the server as a whole)."""
    request = conversions.health_request(service)
    response = yield from _unary(core, calls.HEALTH_CHECK, request, timeout)
    return conversions.health_status(response)
