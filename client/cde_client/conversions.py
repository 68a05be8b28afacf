"""Wire (protobuf) ↔ user types: the only module that reads or builds API messages' fields."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from cde.v1 import embedding_service_pb2 as pb
from google.protobuf.message import Message

from cde_client._calls import HealthCheckRequest
from cde_client.errors import CdeError, InconsistentResult, ProtocolError, error_for_status
from cde_client.models import (
    ContextSampling,
    ContextSet,
    ContextSetRevision,
    EmbedResult,
    FloatMatrix,
    HealthStatus,
    Limits,
    ModelInfo,
    Prompt,
)

_WIRE_FLOAT = np.dtype("<f4")

_SAMPLING = {
    pb.CONTEXT_SAMPLING_UNSPECIFIED: ContextSampling.UNSPECIFIED,
    pb.CONTEXT_SAMPLING_EXACT: ContextSampling.EXACT,
    pb.CONTEXT_SAMPLING_SUBSAMPLED: ContextSampling.SUBSAMPLED,
    pb.CONTEXT_SAMPLING_OVERSAMPLED: ContextSampling.OVERSAMPLED,
}
_HEALTH_STATUSES = (  # grpc.health.v1 ServingStatus numbers
    HealthStatus.UNKNOWN,
    HealthStatus.SERVING,
    HealthStatus.NOT_SERVING,
    HealthStatus.SERVICE_UNKNOWN,
)


# --- matrices ---------------------------------------------------------------------------


def matrix_to_array(matrix: pb.Matrix) -> FloatMatrix:
    """A read-only float32 [rows, dim] view of the message's bytes (no copy of the values)."""
    rows, dim = int(matrix.rows), int(matrix.dim)
    data = matrix.data
    if len(data) != rows * dim * _WIRE_FLOAT.itemsize:
        raise ProtocolError(
            f"matrix of {rows}x{dim} float32 needs {rows * dim * 4} bytes, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=_WIRE_FLOAT).reshape(rows, dim)
    if not _WIRE_FLOAT.isnative:  # big-endian hosts only
        array = array.astype(np.float32)
        array.flags.writeable = False
    return array


def array_to_matrix(array: FloatMatrix) -> pb.Matrix:
    """A Matrix message of a 2-D float array (converted to little-endian float32)."""
    values = np.ascontiguousarray(array, dtype=_WIRE_FLOAT)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {values.shape}")
    return pb.Matrix(data=values.tobytes(), rows=values.shape[0], dim=values.shape[1])


# --- requests -----------------------------------------------------------------------------


def embed_request(
    texts: Sequence[str],
    *,
    prompt: str | None,
    context: str | None,
    normalize: bool,
    truncate: bool,
) -> pb.EmbedRequest:
    """An EmbedRequest (None prompt/context: the server defaults, "document" and built-in)."""
    return pb.EmbedRequest(
        texts=texts,
        prompt=prompt or "",
        context_set=context or "",
        normalize=normalize,
        truncate=truncate,
    )


def context_set_options(
    name: str,
    *,
    replace: bool,
    prompt: str | None,
    seed: int | None,
    activate: bool = True,
    idempotency_key: str = "",
) -> pb.CreateContextSetRequest:
    """The first message of a CreateContextSet stream."""
    options = pb.ContextSetOptions(
        name=name, replace=replace, prompt=prompt or "", idempotency_key=idempotency_key
    )
    if seed is not None:
        options.seed = seed
    if not activate:
        options.activate = False
    return pb.CreateContextSetRequest(options=options)


def document_batch(documents: Sequence[str]) -> pb.CreateContextSetRequest:
    """A follow-up message of a CreateContextSet stream."""
    return pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=documents))


# --- responses ----------------------------------------------------------------------------


def embed_result(response: pb.EmbedResponse) -> EmbedResult:
    """The user view of one EmbedResponse (embeddings share the received bytes)."""
    embeddings = matrix_to_array(response.embeddings)
    token_counts = tuple(response.token_counts)
    if token_counts and len(token_counts) != embeddings.shape[0]:
        raise ProtocolError(
            f"{len(token_counts)} token counts for {embeddings.shape[0]} embeddings"
        )
    return EmbedResult(
        embeddings=embeddings,
        token_counts=token_counts,
        model_id=response.model_id,
        context_set=response.context_set,
        context_revision=int(response.context_revision),
        request_ids=(response.request_id,) if response.request_id else (),
    )


def merge_embed_results(parts: Sequence[EmbedResult]) -> EmbedResult:
    """One result from the results of consecutive chunks of one input, in order.

    Raises `InconsistentResult` when the chunks were embedded by different models or
    different revisions of the context set (it was replaced between two chunks).
    """
    if len(parts) == 1:
        return parts[0]
    if not parts:
        raise ValueError("no results to merge")
    first = parts[0]
    for part in parts[1:]:
        if (part.model_id, part.context_set, part.context_revision) != (
            first.model_id,
            first.context_set,
            first.context_revision,
        ):
            raise InconsistentResult(
                "the parts of a split embed call were made with different models or context "
                f"revisions ({first.model_id}/{first.context_set}@{first.context_revision} vs "
                f"{part.model_id}/{part.context_set}@{part.context_revision}); retry the call"
            )
    embeddings = np.concatenate([part.embeddings for part in parts], axis=0)
    embeddings.flags.writeable = False
    return EmbedResult(
        embeddings=embeddings,
        token_counts=tuple(count for part in parts for count in part.token_counts),
        model_id=first.model_id,
        context_set=first.context_set,
        context_revision=first.context_revision,
        request_ids=tuple(rid for part in parts for rid in part.request_ids),
    )


def context_set(
    message: pb.ContextSet,
    *,
    documents: Sequence[str] | None = None,
    dataset_embeddings: FloatMatrix | None = None,
    revisions: Sequence[ContextSetRevision] = (),
) -> ContextSet:
    """The user view of a ContextSet message (plus the optional documents/embeddings)."""
    return ContextSet(
        name=message.name,
        create_time=_timestamp(message),
        model_fingerprint=message.model_fingerprint,
        prompt=message.prompt,
        source_document_count=int(message.source_document_count),
        context_size=int(message.context_size),
        revision=int(message.revision),
        sampling=_SAMPLING.get(message.sampling, ContextSampling.UNSPECIFIED),
        compatible=bool(message.compatible),
        context_id=message.context_id,
        documents=tuple(documents) if documents is not None else None,
        dataset_embeddings=dataset_embeddings,
        active_revision=int(message.active_revision) or int(message.revision),
        revisions=tuple(revisions),
    )


def context_set_revision(message: pb.ContextSetRevision) -> ContextSetRevision:
    """The user view of a ContextSetRevision message."""
    return ContextSetRevision(
        revision=int(message.revision),
        create_time=message.create_time.ToDatetime(tzinfo=UTC),
        sampling=_SAMPLING.get(message.sampling, ContextSampling.UNSPECIFIED),
        source_document_count=int(message.source_document_count),
        context_id=message.context_id,
        model_fingerprint=message.model_fingerprint,
        prompt=message.prompt,
        active=bool(message.active),
    )


def context_set_details(
    response: pb.GetContextSetResponse, *, include_documents: bool, include_embeddings: bool
) -> ContextSet:
    """The user view of a GetContextSetResponse."""
    return context_set(
        response.context_set,
        documents=list(response.documents) if include_documents else None,
        dataset_embeddings=(
            matrix_to_array(response.dataset_embeddings) if include_embeddings else None
        ),
        revisions=[context_set_revision(r) for r in response.revisions],
    )


def prompt(message: pb.Prompt) -> Prompt:
    """The user view of a Prompt message."""
    return Prompt(name=message.name, text=message.text, builtin=bool(message.builtin))


def model_info(response: pb.GetModelInfoResponse) -> ModelInfo:
    """The user view of a GetModelInfoResponse."""
    limits = response.limits
    return ModelInfo(
        model_name=response.model_name,
        fingerprint=response.fingerprint,
        hidden_size=int(response.hidden_size),
        context_size=int(response.context_size),
        max_tokens=int(response.max_tokens),
        dtype=response.dtype,
        limits=Limits(
            max_texts_per_request=int(limits.max_texts_per_request),
            max_text_bytes=int(limits.max_text_bytes),
            max_message_bytes=int(limits.max_message_bytes),
            max_context_documents=int(limits.max_context_documents),
            max_concurrent_streams=int(limits.max_concurrent_streams),
            max_context_bytes=int(limits.max_context_bytes),
        ),
        family=response.family,
    )


def stream_item(response: pb.EmbedStreamResponse) -> EmbedResult | CdeError:
    """The result of one EmbedStream item: embeddings, or the error that failed only it."""
    which = response.WhichOneof("result")
    if which == "response":
        return embed_result(response.response)
    if which == "error":
        return error_for_status(response.error.code, response.error.message)
    raise ProtocolError(f"stream item {response.sequence} has neither a response nor an error")


def health_request(service: str) -> Message:
    """A grpc.health.v1 HealthCheckRequest."""
    return HealthCheckRequest(service=service)


def health_status(response: Message) -> HealthStatus:
    """The serving status in a grpc.health.v1 HealthCheckResponse."""
    number = int(getattr(response, "status", 0))
    return _HEALTH_STATUSES[number] if 0 <= number < len(_HEALTH_STATUSES) else HealthStatus.UNKNOWN


def _timestamp(message: pb.ContextSet) -> datetime:
    if not message.HasField("create_time"):
        return datetime.fromtimestamp(0, tz=UTC)
    return message.create_time.ToDatetime(tzinfo=UTC)
