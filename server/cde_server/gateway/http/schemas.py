"""Request and response bodies of the HTTP API (pydantic models; they make the OpenAPI
document). OpenAI's shapes for `/v1/embeddings` and `/v1/models`, the proto's names for REST."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

EncodingFormat = Literal["float", "base64"]
Sampling = Literal["unspecified", "exact", "subsampled", "oversampled"]
UINT64_MAX = 2**64 - 1

_TOKEN_NOTE = (
    "Token ids are ids of the served model's own tokenizer (see `vocab_size` in "
    "`GET /v1/model-info`), not OpenAI's; the prompt's tokens and [CLS]/[SEP] are added."
)


# --- OpenAI-compatible ---------------------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings, as OpenAI defines it, plus CDE's extension fields."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "docs:query", "input": ["who wrote hamlet"]},
                {"model": "docs", "input": "a document", "encoding_format": "base64"},
            ]
        },
    )

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="A text, texts, one list of token ids, or lists of token ids. " + _TOKEN_NOTE
    )
    model: StrictStr = Field(
        description=(
            "`<target>[@<revision>][:<prompt>]`: target is a context set name or the served "
            "model's name (its built-in default context); revision must be the set's current "
            "one; prompt is a built-in or custom prompt name (default: document). Examples: "
            "`docs:query`, `docs@3:document`, `demo-all-MiniLM-L6-v2:query`."
        ),
        examples=["docs:query"],
    )
    encoding_format: EncodingFormat = Field(
        default="float", description="float: arrays of numbers; base64: little-endian float32"
    )
    dimensions: StrictInt | None = Field(
        default=None, description="Only the model's own size is accepted (no shortened vectors)"
    )
    user: StrictStr | None = Field(default=None, description="Logged with the call")
    context_set: StrictStr | None = Field(
        default=None, description="Extension: overrides the model string's target"
    )
    prompt: StrictStr | None = Field(
        default=None, description="Extension: overrides the model string's prompt"
    )
    normalize: StrictBool | None = Field(
        default=None, description="Extension: L2-normalize each vector (default true)"
    )
    truncate: StrictBool | None = Field(
        default=None,
        description="Extension: cut inputs longer than max_tokens (default true; false: 400)",
    )


class EmbeddingObject(BaseModel):
    """One vector of an embeddings response."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the request used (after prompt, special tokens and truncation)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """The answer of POST /v1/embeddings, in OpenAI's shape."""

    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    """One model id: the served model (built-in default context) or a context set."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's error shape."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error answer of the HTTP API."""

    error: ErrorDetail


# --- native REST ----------------------------------------------------------------------------------
class EmbedRequest(BaseModel):
    """POST /v1/embed: the proto's EmbedRequest."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"texts": ["who wrote hamlet"], "prompt": "query", "context_set": "docs"}]
        },
    )

    texts: list[StrictStr] = Field(description="1 to CDE_MAX_TEXTS_PER_REQUEST texts")
    prompt: StrictStr = Field(default="", description='prompt name ("": document)')
    context_set: StrictStr = Field(default="", description='context set ("": built-in default)')
    normalize: StrictBool = True
    truncate: StrictBool = True
    encoding_format: EncodingFormat = Field(
        default="float", description="float: arrays; base64: each row little-endian float32"
    )


class EmbedResponse(BaseModel):
    """The proto's EmbedResponse; `embeddings` has one row per text."""

    embeddings: list[list[float]] | list[str]
    dim: int
    model_id: str
    context_set: str
    context_revision: int
    token_counts: list[int]
    request_id: str


class ContextSetCreate(BaseModel):
    """POST /v1/context-sets: options and documents in one JSON body."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "docs", "documents": ["first document", "second document"]}]
        },
    )

    name: StrictStr
    documents: list[StrictStr]
    prompt: StrictStr = Field(default="", description='prompt of the documents ("": document)')
    replace: StrictBool = False
    seed: StrictInt | None = Field(default=None, ge=0, le=UINT64_MAX)


class ContextSetInfo(BaseModel):
    """The proto's ContextSet."""

    name: str
    create_time: datetime
    model_fingerprint: str
    prompt: str
    source_document_count: int
    context_size: int
    revision: int
    sampling: Sampling
    compatible: bool
    context_id: str


class ContextSetDetail(BaseModel):
    """GET /v1/context-sets/{name}."""

    context_set: ContextSetInfo
    documents: list[str] | None = None
    dataset_embeddings: list[list[float]] | None = None


class ContextSetPage(BaseModel):
    """GET /v1/context-sets."""

    context_sets: list[ContextSetInfo]
    next_page_token: str


class PromptInfo(BaseModel):
    """The proto's Prompt."""

    name: str
    text: str
    builtin: bool


class PromptList(BaseModel):
    """GET /v1/prompts."""

    prompts: list[PromptInfo]


class PromptText(BaseModel):
    """PUT /v1/prompts/{name}."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "legal: "}]})

    text: StrictStr


class LimitsInfo(BaseModel):
    """The gateway's request limits."""

    max_texts_per_request: int
    max_text_bytes: int
    max_message_bytes: int
    max_context_documents: int
    max_concurrent_streams: int
    max_context_bytes: int


class ModelInfoResponse(BaseModel):
    """GET /v1/model-info: the proto's GetModelInfoResponse, plus the vocabulary size."""

    model_name: str
    fingerprint: str
    hidden_size: int
    context_size: int
    max_tokens: int
    vocab_size: int
    dtype: str
    family: str = Field(description='"v1" (cde-small-v1), "v2" (cde-small-v2) or "demo"')
    limits: LimitsInfo


class Probe(BaseModel):
    """GET /healthz and /readyz."""

    status: str
