"""The typed results users see: frozen dataclasses and enums (never protobuf messages)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
"""float32 array of shape [rows, dim]."""


class ContextSampling(enum.StrEnum):
    """How the source documents became exactly `context_size` context documents."""

    UNSPECIFIED = "unspecified"
    EXACT = "exact"
    """As many documents as the model wants were given."""
    SUBSAMPLED = "subsampled"
    """More were given; a seeded sample without replacement was kept."""
    OVERSAMPLED = "oversampled"
    """Fewer were given; they were repeated deterministically."""


class HealthStatus(enum.StrEnum):
    """Serving status reported by the standard gRPC health service."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclass(frozen=True)
class ContextSet:
    """A stored context set.

    `documents` and `dataset_embeddings` are filled only when asked for in `get_context_set`.
    """

    name: str
    create_time: datetime
    model_fingerprint: str
    prompt: str
    source_document_count: int
    context_size: int
    revision: int
    sampling: ContextSampling
    compatible: bool
    """False when the set was made with another model (rebuild it with replace=True)."""
    context_id: str
    documents: tuple[str, ...] | None = None
    dataset_embeddings: FloatMatrix | None = field(default=None, compare=False, repr=False)
    active_revision: int = 0
    """The set's active revision (what the bare name serves); `revision` is the one described."""
    revisions: tuple[ContextSetRevision, ...] = ()
    """The retained revisions, ascending (filled by `get_context_set`)."""


@dataclass(frozen=True)
class ContextSetRevision:
    """One retained revision of a context set (address it as "name@revision")."""

    revision: int
    create_time: datetime
    sampling: ContextSampling
    source_document_count: int
    context_id: str
    model_fingerprint: str
    prompt: str
    active: bool


@dataclass(frozen=True)
class Prompt:
    """A named prefix prepended to texts (built-ins: query, document, classification, ...)."""

    name: str
    text: str
    builtin: bool


@dataclass(frozen=True)
class Limits:
    """The server's request limits (0 means the server did not say)."""

    max_texts_per_request: int
    max_text_bytes: int
    max_message_bytes: int
    max_context_documents: int
    max_concurrent_streams: int
    max_context_bytes: int = 0  # source bytes of one context set


@dataclass(frozen=True)
class ModelInfo:
    """The served model and the server's limits."""

    model_name: str
    fingerprint: str
    hidden_size: int
    context_size: int
    """Number of dataset embeddings the model conditions on (N)."""
    max_tokens: int
    dtype: str
    limits: Limits
    family: str = ""
    """Model family: "v1" (cde-small-v1), "v2" (cde-small-v2) or "demo"; "" from a server that
    does not report it."""


@dataclass(frozen=True, eq=False)
class EmbedResult:
    """Embeddings of a list of texts, in input order.

    `embeddings` is float32 [n, hidden] and read-only (it may share memory with the
    received message); use `.copy()` for a writable array. `request_ids` has one id per
    server call the client made (large inputs are split into several calls).
    """

    embeddings: FloatMatrix
    token_counts: tuple[int, ...]
    model_id: str
    context_set: str
    """Context set used; "" for the built-in default context."""
    context_revision: int
    request_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])
