"""Encoding of context-set records shared by the store backends.

Metadata travels as a JSON object, embeddings as raw float32 little-endian row-major bytes,
documents as a JSON array of strings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from cde_server.stores.base import SAMPLINGS, ContextSetSummary, Sampling, StoredContextSet

_FLOAT32_LE = np.dtype("<f4")


def encode_embeddings(embeddings: npt.NDArray[np.float32]) -> bytes:
    """float32 little-endian row-major bytes."""
    return np.ascontiguousarray(embeddings, dtype=_FLOAT32_LE).tobytes()


def decode_embeddings(data: bytes, rows: int, dim: int) -> npt.NDArray[np.float32]:
    """Inverse of `encode_embeddings`; checks the size against the shape."""
    if len(data) != rows * dim * _FLOAT32_LE.itemsize:
        raise ValueError(f"embedding blob has {len(data)} bytes, expected {rows}x{dim} float32")
    array = np.frombuffer(data, dtype=_FLOAT32_LE).reshape(rows, dim)
    return array.astype(np.float32, copy=False)


def encode_documents(documents: tuple[str, ...]) -> str:
    """JSON array (non-ASCII kept as is)."""
    return json.dumps(list(documents), ensure_ascii=False)


def decode_documents(data: str | bytes) -> tuple[str, ...]:
    """Inverse of `encode_documents`."""
    value = json.loads(data)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("documents record is not a JSON array of strings")
    return tuple(value)


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds (sorts and round-trips exactly)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: str) -> datetime:
    """Inverse of `format_time`."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_sampling(value: str) -> Sampling:
    """Validate a stored sampling label."""
    if value not in SAMPLINGS:
        raise ValueError(f"unknown sampling {value!r} in stored record")
    return cast(Sampling, value)


def encode_metadata(context_set: StoredContextSet) -> str:
    """JSON object of everything but revision, embeddings and documents."""
    return json.dumps(
        {
            "name": context_set.name,
            "created_at": format_time(context_set.created_at),
            "model_fingerprint": context_set.model_fingerprint,
            "prompt": context_set.prompt,
            "source_document_count": context_set.source_document_count,
            "sampling": context_set.sampling,
            "context_id": context_set.context_id,
            "context_size": context_set.context_size,
            "embedding_dim": context_set.embedding_dim,
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def decode_metadata(data: str | bytes, revision: int) -> ContextSetSummary:
    """Inverse of `encode_metadata`, with the revision kept beside it."""
    fields: dict[str, Any] = json.loads(data)
    return ContextSetSummary(
        name=str(fields["name"]),
        created_at=parse_time(fields["created_at"]),
        model_fingerprint=str(fields["model_fingerprint"]),
        prompt=str(fields["prompt"]),
        source_document_count=int(fields["source_document_count"]),
        revision=revision,
        sampling=parse_sampling(fields["sampling"]),
        context_id=str(fields["context_id"]),
        context_size=int(fields["context_size"]),
        embedding_dim=int(fields["embedding_dim"]),
    )


def assemble(
    summary: ContextSetSummary,
    embeddings: npt.NDArray[np.float32],
    documents: tuple[str, ...] = (),
) -> StoredContextSet:
    """A full record from its parts."""
    return StoredContextSet(
        name=summary.name,
        created_at=summary.created_at,
        model_fingerprint=summary.model_fingerprint,
        prompt=summary.prompt,
        source_document_count=summary.source_document_count,
        revision=summary.revision,
        sampling=summary.sampling,
        context_id=summary.context_id,
        embeddings=embeddings,
        documents=documents,
    )
