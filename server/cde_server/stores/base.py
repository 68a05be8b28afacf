"""Records and the `Store` protocol shared by every store backend."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from cde_server.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError

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
    idempotency_key: str = ""
    """The key of the create that made this revision ("": none)."""
    request_fingerprint: str = ""
    """Hash of that create's request (options and documents), to recognize its retries."""


@dataclass(frozen=True, eq=False)
class StoredContextSet:
    """A complete context set: metadata, N dataset embeddings and the sampled documents.

    `embeddings` is normalized to a read-only C-contiguous float32 [N, hidden] array.
    `documents` is empty when the set was read without them. `revision` is assigned by the
    store (1 for a new set, the highest number the name ever had + 1 on replace); the value
    passed to create is ignored. A stored revision never changes. `idempotency_key` and
    `request_fingerprint` identify the create that made it (see `Store.create_context_set`).
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
    idempotency_key: str = ""
    request_fingerprint: str = ""

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
            idempotency_key=self.idempotency_key,
            request_fingerprint=self.request_fingerprint,
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


def idempotency_mismatch_error(name: str, key: str, revision: int) -> FailedPreconditionError:
    """FAILED_PRECONDITION for an idempotency key reused with a different request."""
    return FailedPreconditionError(
        f'idempotency key "{key}" was already used for a different create of context set '
        f'"{name}" (revision {revision}); use a new key for a new create'
    )


@dataclass(frozen=True)
class StoreQuota:
    """Per-tenant limits a create must stay within (0: no limit)."""

    max_context_sets: int = 0
    max_stored_bytes: int = 0


@dataclass(frozen=True)
class StoreUsage:
    """What one tenant (namespace) holds: context sets, and the bytes of all their retained
    revisions (distinct embedding rows, documents and sample indices)."""

    context_sets: int
    stored_bytes: int


QuotaName = Literal["context_sets", "stored_bytes"]


class QuotaExceededError(ResourceExhaustedError):
    """A create would take the tenant past one of its `StoreQuota` limits (no retry hint:
    it lasts until the tenant frees space)."""

    def __init__(self, quota: QuotaName, *, usage: int, needed: int, limit: int) -> None:
        if quota == "context_sets":
            message = (
                f"quota exceeded: this tenant has {usage} context sets and its limit is "
                f"{limit}; delete a context set before creating another (retrying will not "
                "help until then)"
            )
        else:
            message = (
                f"quota exceeded: this tenant's context sets use {usage} bytes and the new "
                f"revision needs {needed} more, over its limit of {limit} stored bytes; delete "
                'context sets or old revisions ("name@N") to free space (retrying will not '
                "help until then)"
            )
        super().__init__(message)
        self.quota: QuotaName = quota
        self.usage = usage
        self.needed = needed
        self.limit = limit


def check_quota(quota: StoreQuota | None, before: StoreUsage, after: StoreUsage) -> None:
    """`QuotaExceededError` when `after` is past a limit of `quota` and grew from `before`."""
    if quota is None:
        return
    sets_limit, bytes_limit = quota.max_context_sets, quota.max_stored_bytes
    if sets_limit and after.context_sets > sets_limit and after.context_sets > before.context_sets:
        raise QuotaExceededError(
            "context_sets", usage=before.context_sets, needed=1, limit=sets_limit
        )
    if (
        bytes_limit
        and after.stored_bytes > bytes_limit
        and after.stored_bytes > before.stored_bytes
    ):
        raise QuotaExceededError(
            "stored_bytes",
            usage=before.stored_bytes,
            needed=after.stored_bytes - before.stored_bytes,
            limit=bytes_limit,
        )


NAMESPACE_SEPARATOR = "/"


def namespace_of(name: str) -> str:
    """The namespace (tenant) of a stored name: "t" for "t/docs", "" for a bare name."""
    namespace, separator, _ = name.partition(NAMESPACE_SEPARATOR)
    return namespace if separator else ""


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
        quota: StoreQuota | None = None,
    ) -> StoredContextSet:
        """Store a new immutable revision atomically; returns it with its number.

        `AlreadyExistsError` when the name exists and not `replace`; of concurrent creates
        of a new name exactly one wins, concurrent replaces get distinct numbers. The first
        revision of a set is always active; a later one becomes active when `activate`
        (readers of the name see the old or the new revision, never a mix). Afterwards
        inactive revisions beyond the `keep` highest numbers are pruned (never the active).

        When `context_set.idempotency_key` is set and a retained revision of the name has
        that key, nothing is written: that revision is returned if its request fingerprint
        is the same, else `FailedPreconditionError` (`idempotency_mismatch_error`). A create
        that would take the name's namespace past `quota` (after pruning) writes nothing and
        raises `QuotaExceededError`.
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

    async def usage(self, namespace: str) -> StoreUsage:
        """What `namespace` ("" : the bare names) holds, as the quotas count it."""
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
