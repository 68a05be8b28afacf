"""REST for the native API: the proto's operations as JSON, with the proto's names.

POST /v1/embed; context sets (POST /v1/context-sets with a JSON body, or
POST /v1/context-sets/{name}/documents with an NDJSON stream of documents; GET list with
pagination; GET one; DELETE); prompts (GET, PUT, DELETE); GET /v1/model-info.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from cde_server.errors import InvalidArgumentError
from cde_server.gateway.call_scope import ActiveCall
from cde_server.gateway.http.encoding import json_bytes, rows_as
from cde_server.gateway.http.errors import documented_errors
from cde_server.gateway.http.schemas import (
    UINT64_MAX,
    ContextSetCreate,
    ContextSetDetail,
    ContextSetInfo,
    ContextSetPage,
    EmbedRequest,
    EmbedResponse,
    LimitsInfo,
    ModelInfoResponse,
    PromptInfo,
    PromptList,
    PromptText,
)
from cde_server.gateway.http.services import admitted, services_of
from cde_server.gateway.service import ContextSetInput, ContextSetView, EmbedInput
from cde_server.stores.base import ContextSetSummary

router = APIRouter(tags=["Native API"])
# Each route's admitted call (API key, rate limit), named as the proto's RPC.
_EMBED_CALL = admitted("Embed")
_CREATE_CONTEXT_SET_CALL = admitted("CreateContextSet")
_LIST_CONTEXT_SETS_CALL = admitted("ListContextSets")
_GET_CONTEXT_SET_CALL = admitted("GetContextSet")
_DELETE_CONTEXT_SET_CALL = admitted("DeleteContextSet")
_IDEMPOTENCY_KEY = Header(
    default="",
    alias="Idempotency-Key",
    description="makes retries safe: a create whose key the set's retained revisions carry "
    "returns that revision (the same key with other content: 409)",
)
_LIST_PROMPTS_CALL = admitted("ListPrompts")
_PUT_PROMPT_CALL = admitted("PutPrompt")
_DELETE_PROMPT_CALL = admitted("DeletePrompt")
_GET_MODEL_INFO_CALL = admitted("GetModelInfo")
NDJSON = "application/x-ndjson"
_UPLOAD_BATCH = 512
_INT32_MAX = 2**31 - 1


# --- embedding ------------------------------------------------------------------------------------
@router.post("/v1/embed", response_model=EmbedResponse, responses=documented_errors(403, 404, 409))
async def embed(request: Request, body: EmbedRequest, call: ActiveCall = _EMBED_CALL) -> Response:
    """Embed texts with a prompt and a context set (the proto's Embed)."""
    service = services_of(request).service
    result = await service.embed(
        call,
        EmbedInput(
            texts=body.texts,
            prompt=body.prompt,
            context_set=body.context_set,
            normalize=body.normalize,
            truncate=body.truncate,
        ),
    )
    payload = {
        "embeddings": rows_as(result.vectors, body.encoding_format),
        "dim": int(result.vectors.shape[1]),
        "model_id": result.model_id,
        "context_set": result.context_set,
        "context_revision": result.context_revision,
        "token_counts": list(result.token_counts),
        "request_id": call.request_id,
    }
    return Response(json_bytes(payload), media_type="application/json")


# --- context sets ---------------------------------------------------------------------------------
def context_set_info(summary: ContextSetSummary, model_fingerprint: str) -> ContextSetInfo:
    """The JSON form of a set's metadata (`compatible`: built with the served model)."""
    return ContextSetInfo(
        name=summary.name,
        create_time=summary.created_at,
        model_fingerprint=summary.model_fingerprint,
        prompt=summary.prompt,
        source_document_count=summary.source_document_count,
        context_size=summary.context_size,
        revision=summary.revision,
        sampling=summary.sampling,
        compatible=summary.model_fingerprint == model_fingerprint,
        context_id=summary.context_id,
    )


def _info_of(view: ContextSetView) -> ContextSetInfo:
    return context_set_info(view.summary, view.model_fingerprint)


@router.post(
    "/v1/context-sets",
    status_code=201,
    response_model=ContextSetInfo,
    responses=documented_errors(403, 404, 409),
)
async def create_context_set(
    request: Request,
    body: ContextSetCreate,
    idempotency_key: str = _IDEMPOTENCY_KEY,
    call: ActiveCall = _CREATE_CONTEXT_SET_CALL,
) -> Any:
    """Sample N of the documents, embed them with stage 1, store the set."""
    service = services_of(request).service

    async def batches() -> AsyncIterator[Sequence[str]]:
        yield body.documents

    async with service.stream_slot(call):
        options = ContextSetInput(
            body.name, body.prompt, body.replace, body.seed, idempotency_key=idempotency_key
        )
        return _info_of(await service.create_context_set(call, options, batches()))


@router.post(
    "/v1/context-sets/{name}/documents",
    status_code=201,
    response_model=ContextSetInfo,
    responses=documented_errors(403, 404, 409),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "One JSON string (a document) or array of strings per line",
            "content": {
                NDJSON: {
                    "schema": {"type": "string"},
                    "example": '"first document"\n"second document"\n',
                }
            },
        }
    },
)
async def upload_context_set(
    request: Request,
    name: str,
    prompt: str = "",
    replace: bool = False,
    seed: int | None = Query(default=None, ge=0, le=UINT64_MAX),
    idempotency_key: str = _IDEMPOTENCY_KEY,
    call: ActiveCall = _CREATE_CONTEXT_SET_CALL,
) -> Any:
    """Create a set from an NDJSON stream of documents (for uploads too large for one body)."""
    service = services_of(request).service
    async with service.stream_slot(call):
        options = ContextSetInput(name, prompt, replace, seed, idempotency_key=idempotency_key)
        view = await service.create_context_set(call, options, ndjson_batches(request.stream()))
        return _info_of(view)


async def ndjson_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[Sequence[str]]:
    """Documents of an NDJSON body in batches; a line that is not a string (or an array of
    strings) is INVALID_ARGUMENT."""
    pending = bytearray()
    batch: list[str] = []
    line_number = 0
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = bytes(pending).split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            line_number += 1
            batch.extend(_documents_of(line, line_number))
            if len(batch) >= _UPLOAD_BATCH:
                yield batch
                batch = []
    if pending.strip():
        batch.extend(_documents_of(bytes(pending), line_number + 1))
    if batch:
        yield batch


def _documents_of(line: bytes, number: int) -> list[str]:
    if not line.strip():
        return []
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"NDJSON line {number} is not valid JSON: {exc}") from None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise InvalidArgumentError(
        f"NDJSON line {number} must be a JSON string or an array of strings (documents)"
    )


@router.get("/v1/context-sets", response_model=ContextSetPage, responses=documented_errors(403))
async def list_context_sets(
    request: Request,
    page_size: int = Query(default=0, ge=0, le=_INT32_MAX),
    page_token: str = "",
    all_tenants: bool = False,
    call: ActiveCall = _LIST_CONTEXT_SETS_CALL,
) -> Any:
    """One page of the caller's sets by name (all_tenants: everyone's, admin keys only)."""
    page = await services_of(request).service.list_context_sets(
        call, page_size=page_size, page_token=page_token, all_tenants=all_tenants
    )
    return ContextSetPage(
        context_sets=[context_set_info(s, page.model_fingerprint) for s in page.summaries],
        next_page_token=page.next_page_token,
    )


@router.get(
    "/v1/context-sets/{name}",
    response_model=ContextSetDetail,
    responses=documented_errors(404),
)
async def get_context_set(
    request: Request,
    name: str,
    include_documents: bool = False,
    include_embeddings: bool = False,
    call: ActiveCall = _GET_CONTEXT_SET_CALL,
) -> Any:
    """Metadata, and on request the documents and dataset embeddings."""
    view = await services_of(request).service.get_context_set(
        call, name, include_documents=include_documents, include_embeddings=include_embeddings
    )
    detail = ContextSetDetail(
        context_set=_info_of(view),
        documents=list(view.documents) if include_documents else None,
        dataset_embeddings=view.embeddings.tolist() if view.embeddings is not None else None,
    )
    return Response(json_bytes(detail.model_dump(mode="json")), media_type="application/json")


@router.delete("/v1/context-sets/{name}", status_code=204, responses=documented_errors(404))
async def delete_context_set(
    request: Request, name: str, call: ActiveCall = _DELETE_CONTEXT_SET_CALL
) -> Response:
    """Delete a set (404 if absent)."""
    await services_of(request).service.delete_context_set(call, name)
    return Response(status_code=204)


# --- prompts --------------------------------------------------------------------------------------
@router.get("/v1/prompts", response_model=PromptList, responses=documented_errors())
async def list_prompts(request: Request, call: ActiveCall = _LIST_PROMPTS_CALL) -> Any:
    """Built-ins, then custom prompts by name."""
    prompts = await services_of(request).service.list_prompts(call)
    return PromptList(
        prompts=[PromptInfo(name=p.name, text=p.text, builtin=p.builtin) for p in prompts]
    )


@router.put("/v1/prompts/{name}", response_model=PromptInfo, responses=documented_errors())
async def put_prompt(
    request: Request, name: str, body: PromptText, call: ActiveCall = _PUT_PROMPT_CALL
) -> Any:
    """Create or replace a custom prompt."""
    prompt = await services_of(request).service.put_prompt(call, name, body.text)
    return PromptInfo(name=prompt.name, text=prompt.text, builtin=prompt.builtin)


@router.delete("/v1/prompts/{name}", status_code=204, responses=documented_errors(404))
async def delete_prompt(
    request: Request, name: str, call: ActiveCall = _DELETE_PROMPT_CALL
) -> Response:
    """Delete a custom prompt."""
    await services_of(request).service.delete_prompt(call, name)
    return Response(status_code=204)


# --- model ----------------------------------------------------------------------------------------
@router.get("/v1/model-info", response_model=ModelInfoResponse, responses=documented_errors())
async def model_info(request: Request, call: ActiveCall = _GET_MODEL_INFO_CALL) -> Any:
    """The served model, its vocabulary size (for token-id input) and this gateway's limits."""
    service = services_of(request).service
    info = await service.model_info()
    return ModelInfoResponse(
        model_name=info.name,
        fingerprint=info.fingerprint,
        hidden_size=info.hidden_size,
        context_size=info.corpus_size,
        max_tokens=info.max_tokens,
        vocab_size=info.vocab_size,
        dtype=info.dtype,
        family=info.family,
        limits=LimitsInfo(**service.advertised_limits()),
    )
