"""OpenAI-compatible routes: POST /v1/embeddings, GET /v1/models and /v1/models/{id}.

The `model` string selects context set, revision and prompt (`model_string`), so unmodified
OpenAI clients reach every feature; the extension fields override it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from cde_server.domain.names import is_valid_name
from cde_server.errors import NotFoundError
from cde_server.gateway.call_scope import ActiveCall
from cde_server.gateway.http.encoding import json_bytes, rows_as
from cde_server.gateway.http.errors import FieldError, documented_errors
from cde_server.gateway.http.model_string import ModelSelection, parse_model_string
from cde_server.gateway.http.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelList,
    ModelObject,
)
from cde_server.gateway.http.services import admitted, services_of
from cde_server.gateway.service import (
    EmbedInput,
    EmbedResult,
    TokenEmbedInput,
    default_context_revision_error,
)
from cde_server.inference.interface import ServedModelInfo

router = APIRouter(tags=["OpenAI-compatible"])
# Each route's admitted call (API key, rate limit), named as the proto's RPC.
_OPEN_A_I_EMBEDDINGS_CALL = admitted("OpenAIEmbeddings")
_OPEN_A_I_LIST_MODELS_CALL = admitted("OpenAIListModels")
_OPEN_A_I_GET_MODEL_CALL = admitted("OpenAIGetModel")
OWNER = "cde-serve"
_LISTING_PAGE = 1000


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=documented_errors(403, 404, 409),
    summary="Create embeddings (OpenAI-compatible)",
)
async def create_embeddings(
    request: Request,
    body: EmbeddingsRequest,
    call: ActiveCall = _OPEN_A_I_EMBEDDINGS_CALL,
) -> Response:
    """Embed `input` with the context set, revision and prompt that `model` names."""
    services = services_of(request)
    if body.user is not None:
        call.log_fields["user"] = body.user[:256]
    info = await services.service.model_info()
    if body.dimensions is not None and body.dimensions != info.hidden_size:
        raise FieldError(
            f"dimensions={body.dimensions} is not supported: CDE is not trained for shortened "
            f"vectors; this model returns {info.hidden_size} dimensions",
            "dimensions",
        )
    selection = parse_model_string(body.model)
    context_set = body.context_set if body.context_set is not None else target_set(selection, info)
    prompt = body.prompt if body.prompt is not None else selection.prompt
    normalize = True if body.normalize is None else body.normalize
    truncate = True if body.truncate is None else body.truncate
    texts, token_rows = split_input(body.input)
    result: EmbedResult
    if token_rows is not None:
        result = await services.service.embed_tokens(
            call,
            TokenEmbedInput(
                rows=token_rows,
                prompt=prompt,
                context_set=context_set,
                normalize=normalize,
                truncate=truncate,
                revision=selection.revision,
            ),
        )
    else:
        result = await services.service.embed(
            call,
            EmbedInput(
                texts=texts,
                prompt=prompt,
                context_set=context_set,
                normalize=normalize,
                truncate=truncate,
                revision=selection.revision,
            ),
        )
    tokens = sum(result.token_counts)
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": row}
            for index, row in enumerate(rows_as(result.vectors, body.encoding_format))
        ],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(json_bytes(payload), media_type="application/json")


def target_set(selection: ModelSelection, info: ServedModelInfo) -> str:
    """The context set a model string's target names ("": the served model's default)."""
    if selection.target == info.name:
        return ""
    if not is_valid_name(selection.target):
        raise NotFoundError(
            f"model {selection.target[:200]!r} not found; use the served model "
            f'"{info.name}" or a context set name'
        )
    return selection.target


def split_input(value: object) -> tuple[Sequence[str], Sequence[Sequence[int]] | None]:
    """(texts, None) for string input, ((), rows) for token ids."""
    if isinstance(value, str):
        return [value], None
    assert isinstance(value, list)
    if value and all(isinstance(item, int) for item in value):
        return (), [value]
    if value and all(isinstance(item, list) for item in value):
        return (), value
    return value, None


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=documented_errors(),
    summary="List models (OpenAI-compatible)",
)
async def list_models(request: Request, call: ActiveCall = _OPEN_A_I_LIST_MODELS_CALL) -> Any:
    """The served model (its built-in default context) and every context set the caller sees."""
    services = services_of(request)
    info = await services.service.model_info()
    models = [ModelObject(id=info.name, created=services.started_at, owned_by=OWNER)]
    token = ""
    while True:
        page = await services.service.list_context_sets(
            call, page_size=_LISTING_PAGE, page_token=token
        )
        models.extend(
            ModelObject(
                id=summary.name,
                created=int(summary.created_at.timestamp()),
                owned_by=call.tenant or OWNER,
            )
            for summary in page.summaries
        )
        token = page.next_page_token
        if not token:
            break
    return ModelList(data=models)


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelObject,
    responses=documented_errors(404),
    summary="Retrieve a model (OpenAI-compatible)",
)
async def retrieve_model(
    request: Request, model_id: str, call: ActiveCall = _OPEN_A_I_GET_MODEL_CALL
) -> Any:
    """The served model or a context set, by id (a full model string is accepted too; an
    `@revision` in it must exist, as /v1/embeddings requires)."""
    services = services_of(request)
    info = await services.service.model_info()
    selection = parse_model_string(model_id)
    name = target_set(selection, info)
    revision = selection.revision
    if not name:
        if revision not in (None, 0):
            raise default_context_revision_error(revision)
        return ModelObject(id=model_id, created=services.started_at, owned_by=OWNER)
    view = await services.service.get_context_set(
        call, name if revision is None else f"{name}@{revision}"
    )
    return ModelObject(
        id=model_id,
        created=int(view.summary.created_at.timestamp()),
        owned_by=call.tenant or OWNER,
    )
