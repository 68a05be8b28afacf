"""Encoding of context-set records shared by the store backends.

Metadata travels as a JSON object, embeddings as raw float32 little-endian row-major bytes,
documents as a JSON array of strings.

A revision is stored compactly (schema version 3): each distinct embedding row and each
distinct document once, plus the sample, uint32 indices that put them back in order. An
oversampled set of N positions from a few documents thus stores those few documents and
rows, not N copies. `compact` and `Compacted.materialize` convert exactly (bit for bit).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from cde_server.stores.base import SAMPLINGS, ContextSetSummary, Sampling, StoredContextSet

_FLOAT32_LE = np.dtype("<f4")
_INDEX = np.dtype("<u4")


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


@dataclass(frozen=True, eq=False)
class Compacted:
    """A revision's payload as stored: distinct rows, distinct documents, and the sample."""

    embeddings: bytes
    """float32 little-endian distinct embedding rows, [distinct rows, dim]."""
    documents: str
    """JSON array of the distinct documents."""
    sample: bytes
    """uint32 little-endian indices: one per embedding row (into the distinct rows), then
    one per document (into the distinct documents)."""

    @property
    def stored_bytes(self) -> int:
        """What the revision costs in the store (counted against the tenant's quota)."""
        return len(self.embeddings) + len(self.documents.encode("utf-8")) + len(self.sample)

    def materialize(
        self, rows: int, dim: int, *, with_documents: bool
    ) -> tuple[npt.NDArray[np.float32], tuple[str, ...]]:
        """The [rows, dim] embeddings and (if asked) the documents, in sample order."""
        sample = np.frombuffer(self.sample, dtype=_INDEX)
        row_bytes = dim * _FLOAT32_LE.itemsize
        if dim < 1 or len(self.embeddings) % row_bytes or sample.shape[0] < rows:
            raise ValueError(f"payload of {len(self.embeddings)} bytes is not rows of {dim}")
        distinct = np.frombuffer(self.embeddings, dtype=_FLOAT32_LE).reshape(-1, dim)
        embeddings = distinct[_checked(sample[:rows], distinct.shape[0])]
        if not with_documents:
            return embeddings.astype(np.float32, copy=False), ()
        documents = decode_documents(self.documents)
        order = _checked(sample[rows:], len(documents)).tolist()
        return embeddings.astype(np.float32, copy=False), tuple(documents[i] for i in order)


def _checked(indices: npt.NDArray[np.uint32], size: int) -> npt.NDArray[np.uint32]:
    """`indices`, after checking each points into a table of `size` entries."""
    if indices.shape[0] and int(indices.max()) >= size:
        raise ValueError(f"sample index beyond the {size} stored entries")
    return indices


def _distinct(keys: Sequence[Hashable]) -> tuple[list[int], npt.NDArray[np.uint32]]:
    """Where each distinct key first appears, and each key's index among the distinct ones."""
    index_of: dict[Hashable, int] = {}
    first: list[int] = []
    sample = np.empty(len(keys), dtype=_INDEX)
    for position, key in enumerate(keys):
        index = index_of.setdefault(key, len(first))
        if index == len(first):
            first.append(position)
        sample[position] = index
    return first, sample


def compact(embeddings: npt.NDArray[np.float32], documents: Sequence[str]) -> Compacted:
    """The stored form of embedding rows and documents: each distinct row and each distinct
    document once (in order of first appearance), and the indices that rebuild both."""
    matrix = np.ascontiguousarray(embeddings, dtype=_FLOAT32_LE)
    first_rows, row_sample = _distinct([row.tobytes() for row in matrix])
    first_documents, document_sample = _distinct(documents)
    return Compacted(
        embeddings=matrix[first_rows].tobytes(),
        documents=encode_documents(tuple(documents[i] for i in first_documents)),
        sample=row_sample.tobytes() + document_sample.tobytes(),
    )


def compact_legacy(embeddings: bytes, documents: str | bytes, rows: int, dim: int) -> Compacted:
    """`compact` of a revision stored by schema versions 1 and 2 (N rows, N documents)."""
    return compact(decode_embeddings(embeddings, rows, dim), decode_documents(documents))


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
            "idempotency_key": context_set.idempotency_key,
            "request_fingerprint": context_set.request_fingerprint,
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
        idempotency_key=str(fields.get("idempotency_key", "")),
        request_fingerprint=str(fields.get("request_fingerprint", "")),
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
        idempotency_key=summary.idempotency_key,
        request_fingerprint=summary.request_fingerprint,
    )
