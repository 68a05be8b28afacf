"""Domain rules of context sets that need no inference backend.

Collecting streamed documents within limits, sampling them to the model's context size N,
building the stored record (with its content-hash context id) and refusing sets made by
another model. Nothing here imports torch or talks to Triton.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from cde_model.context import DEFAULT_SEED, select_context

from cde_server.domain.names import validate_context_set_name
from cde_server.errors import FailedPreconditionError, InvalidArgumentError
from cde_server.stores.base import ContextSetSummary, Sampling, StoredContextSet
from cde_server.triton.protocol import context_id

_SHOWN_FINGERPRINT = 12
MAX_IDEMPOTENCY_KEY_LENGTH = 128


def sampling_of(source_count: int, n: int) -> Sampling:
    """How `source_count` documents become exactly `n`."""
    if source_count == n:
        return "exact"
    return "subsampled" if source_count > n else "oversampled"


def sample_documents(
    documents: Sequence[str], n: int, seed: int = DEFAULT_SEED
) -> tuple[list[str], Sampling]:
    """The `n` context documents for `documents` and how they were obtained.

    No documents at all is INVALID_ARGUMENT (one document works but gives a poor context).
    """
    if not documents:
        raise InvalidArgumentError("a context set needs at least one document")
    return select_context(documents, n, seed=seed), sampling_of(len(documents), n)


class DocumentCollector:
    """Accumulates the document batches of a CreateContextSet stream within limits."""

    def __init__(
        self,
        *,
        max_documents: int,
        max_document_bytes: int,
        max_total_bytes: int,
    ) -> None:
        """Limits (the gateway's settings): documents per set, UTF-8 bytes per document and of
        all documents."""
        self.max_documents = max_documents
        self.max_document_bytes = max_document_bytes
        self.max_total_bytes = max_total_bytes
        self.total_bytes = 0
        self._documents: list[str] = []

    def add(self, batch: Iterable[str]) -> None:
        """Append a batch; `InvalidArgumentError` past a limit."""
        for document in batch:
            index = len(self._documents)
            if index >= self.max_documents:
                raise InvalidArgumentError(
                    f"more than {self.max_documents} context documents were sent (the limit); "
                    "send a sample of the corpus instead"
                )
            try:
                size = len(document.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidArgumentError(f"context document {index} is not valid UTF-8") from None
            if size > self.max_document_bytes:
                raise InvalidArgumentError(
                    f"context document {index} is {size} bytes; the limit is "
                    f"{self.max_document_bytes}"
                )
            if self.total_bytes + size > self.max_total_bytes:
                raise InvalidArgumentError(
                    f"the context documents exceed the limit of {self.max_total_bytes} bytes "
                    f"in total at document {index}; send a smaller sample of the corpus"
                )
            self.total_bytes += size
            self._documents.append(document)

    @property
    def documents(self) -> list[str]:
        """The documents collected so far, in arrival order."""
        return self._documents


def validate_idempotency_key(key: str) -> str:
    """`key` if it is "" (none) or 1..128 printable ASCII characters; else INVALID_ARGUMENT."""
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not all("!" <= char <= "~" for char in key):
        raise InvalidArgumentError(
            f"invalid idempotency key {key[:40]!r}: use 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
            "printable ASCII characters without spaces (a UUID is a good choice)"
        )
    return key


def request_fingerprint(
    *, prompt: str, seed: int, replace: bool, activate: bool, documents: Sequence[str]
) -> str:
    """SHA-256 of a create's options and documents: equal for the tries of one create."""
    digest = hashlib.sha256()
    digest.update(json.dumps([prompt, seed, replace, activate, len(documents)]).encode())
    for document in documents:
        encoded = document.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def build_context_set(
    *,
    name: str,
    prompt: str,
    documents: Sequence[str],
    embeddings: npt.ArrayLike,
    source_document_count: int,
    sampling: Sampling,
    model_fingerprint: str,
    created_at: datetime | None = None,
    idempotency_key: str = "",
    request_fingerprint: str = "",
) -> StoredContextSet:
    """The record to store: one embedding row per sampled document, context id computed.

    `revision` is 0 here; the store assigns the real one.
    """
    validate_context_set_name(name)
    matrix: npt.NDArray[np.float32] = np.ascontiguousarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(documents):
        raise ValueError(
            f"expected one embedding row per document ({len(documents)}), got shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError("dataset embeddings contain NaN or infinity")
    return StoredContextSet(
        name=name,
        created_at=created_at or datetime.now(UTC),
        model_fingerprint=model_fingerprint,
        prompt=prompt,
        source_document_count=source_document_count,
        revision=0,
        sampling=sampling,
        context_id=context_id(matrix),
        embeddings=matrix,
        documents=tuple(documents),
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
    )


def is_compatible(
    context_set: ContextSetSummary | StoredContextSet, model_fingerprint: str
) -> bool:
    """Whether the set was built by the model with this fingerprint."""
    return context_set.model_fingerprint == model_fingerprint


def require_compatible(
    context_set: ContextSetSummary | StoredContextSet, model_fingerprint: str
) -> None:
    """`FailedPreconditionError` when the set was built by another model."""
    if not is_compatible(context_set, model_fingerprint):
        raise FailedPreconditionError(
            f'context set "{context_set.name}" was built with model '
            f"{context_set.model_fingerprint[:_SHOWN_FINGERPRINT]}, but this server runs model "
            f"{model_fingerprint[:_SHOWN_FINGERPRINT]}; rebuild it with replace"
        )
