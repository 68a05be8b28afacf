"""Records and the `Store` protocol shared by every store backend."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from cde_server.errors import FailedPreconditionError, NotFoundError

Sampling = Literal["exact", "subsampled", "oversampled"]
SAMPLINGS: tuple[str, ...] = get_args(Sampling)
DEFAULT_REVISIONS_KEPT = 5


@dataclass(frozen=True)
class ContextSetSummary:
    """A context set's metadata (everything but the embeddings and documents)."""

    name: str
    created_at: datetime
    model_fingerprint: str
    prompt: str
    source_document_count: int
    revision: int
    sampling: Sampling
    context_id: str
    context_size: int
    embedding_dim: int


@dataclass(frozen=True, eq=False)
class StoredContextSet:
    """A complete context set: metadata, N dataset embeddings and the sampled documents.

    `embeddings` is normalized to a read-only C-contiguous float32 [N, hidden] array.
    `documents` is empty when the set was read without them. `revision` is assigned by the
    store (1 for a new set, the highest number the name ever had + 1 on replace); the value
    passed to create is ignored. A stored revision never changes.
    """

    name: str
    created_at: datetime
    model_fingerprint: str
    prompt: str
    source_document_count: int
    revision: int
    sampling: Sampling
    context_id: str
    embeddings: npt.NDArray[np.float32]
    documents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D [N, hidden], got shape {embeddings.shape}")
        if embeddings.flags.writeable and embeddings is self.embeddings:
            embeddings = embeddings.copy()
        embeddings.setflags(write=False)
        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "documents", tuple(self.documents))
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")

    @property
    def context_size(self) -> int:
        """Number of dataset embeddings (rows)."""
        return int(self.embeddings.shape[0])

    @property
    def embedding_dim(self) -> int:
        """Width of each dataset embedding."""
        return int(self.embeddings.shape[1])

    def summary(self) -> ContextSetSummary:
        """The metadata of this set."""
        return ContextSetSummary(
            name=self.name,
            created_at=self.created_at,
            model_fingerprint=self.model_fingerprint,
            prompt=self.prompt,
            source_document_count=self.source_document_count,
            revision=self.revision,
            sampling=self.sampling,
            context_id=self.context_id,
            context_size=self.context_size,
            embedding_dim=self.embedding_dim,
        )

    def with_revision(self, revision: int) -> StoredContextSet:
        """A copy carrying the store-assigned revision."""
        return dataclasses.replace(self, revision=revision)


@dataclass(frozen=True)
class RevisionHistory:
    """The retained revisions of one context set (ascending) and which one is active."""

    name: str
    active_revision: int
    latest_revision: int
    revisions: tuple[ContextSetSummary, ...]

    @property
    def active(self) -> ContextSetSummary:
        """The summary of the active revision."""
        return next(r for r in self.revisions if r.revision == self.active_revision)


def kept_revisions(revisions: list[int], active: int, keep: int) -> set[int]:
    """Which of `revisions` retention keeps: the `keep` highest numbers plus the active one."""
    return set(sorted(revisions, reverse=True)[: max(keep, 1)]) | {active}


def missing_revision_error(
    name: str, revision: int, latest: int, kept: list[int], active: int
) -> NotFoundError:
    """NOT_FOUND for a pinned read of a revision the store does not hold (says which it keeps)."""
    if revision > latest or revision < 1:
        return NotFoundError(
            f'context set "{name}" has no revision {revision}; the latest is {latest}'
        )
    shown = ", ".join(str(number) for number in sorted(kept))
    return NotFoundError(
        f'context set "{name}" revision {revision} was pruned or deleted; the kept revisions '
        f"are {shown} (active: {active})"
    )


def active_revision_error(name: str, revision: int) -> FailedPreconditionError:
    """FAILED_PRECONDITION for deleting the active revision alone."""
    return FailedPreconditionError(
        f'revision {revision} is the active revision of context set "{name}"; activate '
        "another first, or delete the whole set"
    )


NAMESPACE_SEPARATOR = "/"


def in_namespace(name: str, namespace: str | None) -> bool:
    """Whether a stored `name` belongs to `namespace` (None: every name; "": no namespace)."""
    if namespace is None:
        return True
    if not namespace:
        return NAMESPACE_SEPARATOR not in name
    return name.startswith(namespace + NAMESPACE_SEPARATOR)


class Store(Protocol):
    """Persistence of context sets and custom prompts (no caching: reads see the latest write).

    Every method raises `StoreUnavailableError` when the backend cannot be used.
    """

    async def create_context_set(
        self,
        context_set: StoredContextSet,
        *,
        replace: bool,
        activate: bool = True,
        keep: int = DEFAULT_REVISIONS_KEPT,
    ) -> StoredContextSet:
        """Store a new immutable revision atomically; returns it with its number.

        `AlreadyExistsError` when the name exists and not `replace`; of concurrent creates
        of a new name exactly one wins, concurrent replaces get distinct numbers. The first
        revision of a set is always active; a later one becomes active when `activate`
        (readers of the name see the old or the new revision, never a mix). Afterwards
        inactive revisions beyond the `keep` highest numbers are pruned (never the active).
        """
        ...

    async def get_context_set(
        self, name: str, *, revision: int | None = None, with_documents: bool = False
    ) -> StoredContextSet:
        """The active revision (or `revision`) with its embeddings (and documents if asked).

        `NotFoundError` if the set is absent, or the revision is (saying which are kept).
        """
        ...

    async def get_summary(self, name: str, *, revision: int | None = None) -> ContextSetSummary:
        """The metadata of the active revision (or `revision`) in one read, without the
        embeddings; `NotFoundError` as in `get_context_set`."""
        ...

    async def get_revisions(self, name: str) -> RevisionHistory:
        """The retained revisions and the active one; `NotFoundError` if absent."""
        ...

    async def activate_context_set(self, name: str, revision: int) -> ContextSetSummary:
        """Make a retained revision the active one, atomically (the last of racing calls
        wins; every reader sees one or the other); `NotFoundError` if it is not retained."""
        ...

    async def list_context_sets(
        self, *, after: str | None, limit: int, namespace: str | None = None
    ) -> list[ContextSetSummary]:
        """Up to `limit` summaries (of the active revisions) in name order, names strictly
        greater than `after`.

        `namespace`: None lists every name; "" only names without a "/"; "t" only the
        names "t/<name>" (see `in_namespace`). Names are returned in full.
        """
        ...

    async def delete_context_set(self, name: str, *, revision: int | None = None) -> None:
        """Delete the whole set, or one inactive revision; `NotFoundError` if absent,
        `FailedPreconditionError` for the active revision alone. Numbers are never reused,
        not even after the whole set was deleted."""
        ...

    async def list_prompts(self, *, namespace: str | None = None) -> dict[str, str]:
        """Custom prompts, name → text (`namespace` as in `list_context_sets`)."""
        ...

    async def get_prompt(self, name: str) -> str:
        """One custom prompt's text; `NotFoundError` if absent."""
        ...

    async def put_prompt(self, name: str, text: str) -> None:
        """Create or replace a custom prompt."""
        ...

    async def delete_prompt(self, name: str) -> None:
        """Delete a custom prompt; `NotFoundError` if absent."""
        ...

    async def ping(self) -> None:
        """Return when the backend is usable; `StoreUnavailableError` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store must not be used afterwards."""
        ...
