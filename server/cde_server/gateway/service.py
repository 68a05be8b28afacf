"""Every operation of the embedding service, independent of the transport that carries it.

`EmbeddingService` validates requests and orchestrates prompts, context sets, the store and
inference. Transports (the gRPC servicer in `grpc_service`) open a call scope (auth, rate
limit, metrics, log), convert their messages to the arguments here and the results back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cde_model.context import DEFAULT_SEED

from cde_server.domain import context_sets, pagination
from cde_server.domain.names import (
    ContextSetReference,
    parse_context_set_reference,
    validate_context_set_name,
)
from cde_server.domain.prompts import Prompt, PromptRegistry
from cde_server.domain.tenancy import TenantStore
from cde_server.domain.vectors import normalize_rows
from cde_server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from cde_server.gateway.admission import FairAdmission
from cde_server.gateway.call_scope import ActiveCall
from cde_server.gateway.limits import TenantLimiter
from cde_server.gateway.metrics import GatewayMetrics
from cde_server.gateway.settings import GatewaySettings
from cde_server.inference.interface import ContextRef, Encoded, Inference, ServedModelInfo
from cde_server.inference.served_model import ServedModel
from cde_server.stores.base import (
    ContextSetSummary,
    QuotaExceededError,
    RevisionHistory,
    Store,
    StoreQuota,
    idempotency_mismatch_error,
)

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedInput:
    """What an Embed call asks for ("" context set: the built-in default context)."""

    texts: Sequence[str]
    prompt: str = ""
    context_set: str = ""
    normalize: bool = True
    truncate: bool = True
    revision: int | None = None
    """The context set's revision the caller expects (None: whichever is current)."""


@dataclass(frozen=True)
class TokenEmbedInput:
    """An Embed call on pre-tokenized input: rows of the served tokenizer's ids, without
    special tokens (the prompt's tokens and [CLS]/[SEP] are added around each row)."""

    rows: Sequence[Sequence[int]]
    prompt: str = ""
    context_set: str = ""
    normalize: bool = True
    truncate: bool = True
    revision: int | None = None


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of one Embed call, before conversion to the wire."""

    vectors: FloatMatrix
    model_id: str
    context_set: str
    context_revision: int
    token_counts: Sequence[int]


@dataclass(frozen=True)
class ContextSetInput:
    """The options of a CreateContextSet call (seed None: the default seed)."""

    name: str
    prompt: str = ""
    replace: bool = False
    seed: int | None = None
    activate: bool = True
    idempotency_key: str = ""
    """Retries of one create send the same key ("": none; see `create_context_set`)."""


@dataclass(frozen=True)
class ContextSetView:
    """A context set as GetContextSet shows it (documents and embeddings on request)."""

    summary: ContextSetSummary
    model_fingerprint: str
    documents: Sequence[str] = ()
    embeddings: FloatMatrix | None = None
    active_revision: int = 0  # 0: the revision described is the active one
    history: RevisionHistory | None = None

    @property
    def active(self) -> int:
        """The set's active revision."""
        return self.active_revision or self.summary.revision


@dataclass(frozen=True)
class ContextSetPage:
    """One page of ListContextSets."""

    summaries: Sequence[ContextSetSummary]
    next_page_token: str
    model_fingerprint: str


def default_context_revision_error(revision: int) -> NotFoundError:
    """NOT_FOUND for a revision of the built-in default context other than 0."""
    return NotFoundError(f"the built-in default context has only revision 0, not {revision}")


class EmbeddingService:
    """The service's operations; each takes the `ActiveCall` its transport opened."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        inference: Inference,
        store: Store,
        model: ServedModel,
        metrics: GatewayMetrics,
        limiter: TenantLimiter,
        admission: FairAdmission,
    ) -> None:
        self.settings = settings
        self._admission = admission
        self._inference = inference
        self._store = store
        self._model = model
        self._metrics = metrics
        self._limiter = limiter
        self._open_streams = 0
        self._quota = StoreQuota(
            max_context_sets=settings.max_context_sets_per_tenant,
            max_stored_bytes=settings.max_stored_bytes_per_tenant,
        )

    def _store_of(self, call: ActiveCall) -> TenantStore:
        """The store as the call's tenant sees it (its own context sets and prompts)."""
        return TenantStore(self._store, call.tenant)

    def _prompts_of(self, call: ActiveCall) -> PromptRegistry:
        """Built-in prompts and the call's tenant's custom prompts."""
        return PromptRegistry(self._store_of(call))

    # --- embedding ------------------------------------------------------------------------
    async def embed(self, call: ActiveCall, request: EmbedInput) -> EmbedResult:
        """Validate, resolve prompt and context, run the second stage, normalize."""
        texts = self._checked_texts(request.texts)
        prompt = await self._prompts_of(call).resolve(request.prompt)
        info = await self._model.info()
        context, revision = await self._context(
            request.context_set, info.fingerprint, self._store_of(call), request.revision
        )
        async with self._admission.admit(call.tenant, len(texts), call.deadline):
            encoded = await self._inference.embed(
                [prompt.apply(text) for text in texts],
                context,
                max_tokens=info.max_tokens,
                allow_truncation=request.truncate,
                timeout_s=call.timeout_s(),
            )
        return self._result(encoded, info, request.context_set, revision, request.normalize)

    async def embed_tokens(self, call: ActiveCall, request: TokenEmbedInput) -> EmbedResult:
        """`embed` for token ids: checked against the vocabulary, framed by the prompt's
        tokens, cut to max_tokens (or refused without truncation)."""
        prompt = await self._prompts_of(call).resolve(request.prompt)
        info = await self._model.info()
        rows = self._checked_token_rows(request.rows, info.vocab_size)
        context, revision = await self._context(
            request.context_set, info.fingerprint, self._store_of(call), request.revision
        )
        async with self._admission.admit(call.tenant, len(rows), call.deadline):
            encoded = await self._inference.embed_tokens(
                rows,
                prompt.apply(""),
                context,
                max_tokens=info.max_tokens,
                allow_truncation=request.truncate,
                timeout_s=call.timeout_s(),
            )
        return self._result(encoded, info, request.context_set, revision, request.normalize)

    def _result(
        self,
        encoded: Encoded,
        info: ServedModelInfo,
        context_set: str,
        revision: int,
        normalize: bool,
    ) -> EmbedResult:
        """Count the work, normalize on request, and package the rows."""
        self._metrics.embedded("second", len(encoded.vectors), int(encoded.token_counts.sum()))
        vectors = encoded.vectors
        if normalize:
            vectors = normalize_rows(vectors)
        return EmbedResult(
            vectors=vectors.astype(np.float32, copy=False),
            model_id=info.fingerprint,
            context_set=context_set,
            context_revision=revision,
            token_counts=[int(count) for count in encoded.token_counts],
        )

    def _checked_token_rows(
        self, rows: Sequence[Sequence[int]], vocab_size: int
    ) -> Sequence[Sequence[int]]:
        limit = self.settings.max_texts_per_request
        if not rows:
            raise InvalidArgumentError(f"the input is empty; send 1 to {limit} token-id lists")
        if len(rows) > limit:
            raise InvalidArgumentError(
                f"{len(rows)} token-id lists in one request; the limit is {limit}"
            )
        for index, row in enumerate(rows):
            if not row:
                raise InvalidArgumentError(f"input[{index}] has no token ids; send at least 1")
            low, high = min(row), max(row)
            if low < 0 or (vocab_size and high >= vocab_size):
                bad = low if low < 0 else high
                bound = vocab_size if vocab_size else "the vocabulary size"
                raise InvalidArgumentError(
                    f"input[{index}] has token id {bad}; ids must lie in [0, {bound}) "
                    "(ids of the served model's own tokenizer)"
                )
        return rows

    def _checked_texts(self, texts: Sequence[str]) -> Sequence[str]:
        limit = self.settings.max_texts_per_request
        if not texts:
            raise InvalidArgumentError(f"texts is empty; send 1 to {limit} texts")
        if len(texts) > limit:
            raise InvalidArgumentError(f"{len(texts)} texts in one request; the limit is {limit}")
        max_bytes = self.settings.max_text_bytes
        for index, text in enumerate(texts):
            if len(text) * 4 > max_bytes and (size := len(text.encode("utf-8"))) > max_bytes:
                raise InvalidArgumentError(
                    f"text {index} is {size} bytes; the limit is {max_bytes}"
                )
        return texts

    async def _context(
        self, requested: str, fingerprint: str, store: TenantStore, revision: int | None = None
    ) -> tuple[ContextRef, int]:
        """The context to embed with and its revision ("" → the built-in default, revision 0).

        `name` resolves to the active revision, `name@N` (or `revision` = N, as the HTTP
        model string gives it) to revision N, in one store read; a cache miss loads exactly
        that revision (immutable, so it cannot change under us).
        """
        if not requested:
            if revision not in (None, 0):
                raise default_context_revision_error(revision)
            default, _ = await self._model.default_context()
            return default, 0
        reference = parse_context_set_reference(requested)
        if revision is not None and reference.revision not in (None, revision):
            raise InvalidArgumentError(
                f"{requested} names revision {reference.revision} but revision {revision} "
                "was asked for"
            )
        name = reference.name
        pinned = reference.revision if revision is None else revision
        summary = await store.get_summary(name, revision=pinned)
        context_sets.require_compatible(summary, fingerprint)

        async def load() -> FloatMatrix:
            stored = await store.get_context_set(name, revision=summary.revision)
            if stored.context_id != summary.context_id:
                raise UnavailableError(
                    f'context set "{name}" was replaced during the request; retry'
                )
            return stored.embeddings

        return ContextRef(summary.context_id, load), summary.revision

    # --- context sets -------------------------------------------------------------------------
    async def create_context_set(
        self,
        call: ActiveCall,
        options: ContextSetInput,
        document_batches: AsyncIterator[Sequence[str]],
    ) -> ContextSetView:
        """Collect the documents, sample N, embed them with stage 1, store the set.

        With an idempotency key, a retained revision made by an earlier try of the same
        create (same key, options and documents) is answered again instead of a new one.
        """
        store = self._store_of(call)
        name = validate_context_set_name(options.name)
        key = context_sets.validate_idempotency_key(options.idempotency_key)
        prompt = await self._prompts_of(call).resolve(options.prompt)
        earlier = await self._keyed_revision(store, name, key)
        if earlier is None:
            if not options.replace:
                await self._refuse_existing(name, store)
            await self._refuse_new_set_over_quota(name, store)
        collector = context_sets.DocumentCollector(
            max_documents=self.settings.max_context_documents,
            max_document_bytes=self.settings.max_text_bytes,
            max_total_bytes=self.settings.max_context_bytes,
        )
        async for batch in document_batches:
            collector.add(batch)
        if not collector.documents:
            raise InvalidArgumentError("no context documents were sent; send at least 1")
        info = await self._model.info()
        seed = DEFAULT_SEED if options.seed is None else options.seed
        fingerprint = ""
        if key:
            fingerprint = context_sets.request_fingerprint(
                prompt=prompt.name,
                seed=seed,
                replace=options.replace,
                activate=options.activate,
                documents=collector.documents,
            )
        if earlier is not None:
            if earlier.request_fingerprint != fingerprint:
                raise idempotency_mismatch_error(name, key, earlier.revision)
            active = (await store.get_summary(name)).revision
            return ContextSetView(earlier, info.fingerprint, active_revision=active)
        documents, sampling = context_sets.sample_documents(
            collector.documents, info.corpus_size, seed
        )
        embeddings = await self._embed_documents(call, [prompt.apply(d) for d in documents])
        record = context_sets.build_context_set(
            name=name,
            prompt=prompt.name,
            documents=documents,
            embeddings=embeddings,
            source_document_count=len(collector.documents),
            sampling=sampling,
            model_fingerprint=info.fingerprint,
            idempotency_key=key,
            request_fingerprint=fingerprint,
        )
        try:
            stored = await store.create_context_set(
                record,
                replace=options.replace,
                activate=options.activate,
                keep=self.settings.context_revisions_kept,
                quota=self._quota,
            )
        except QuotaExceededError as exc:
            self._metrics.quota_refusals.labels(exc.quota).inc()
            raise
        await self._observe_usage(call.tenant, store)
        active = stored.revision
        if not options.activate:
            active = (await store.get_summary(name)).revision
        return ContextSetView(stored.summary(), info.fingerprint, active_revision=active)

    @staticmethod
    async def _keyed_revision(store: TenantStore, name: str, key: str) -> ContextSetSummary | None:
        """The retained revision an earlier try of a keyed create made (None: none yet)."""
        if not key:
            return None
        try:
            history = await store.get_revisions(name)
        except NotFoundError:
            return None
        keyed = [r for r in history.revisions if r.idempotency_key == key]
        return keyed[-1] if keyed else None

    async def _refuse_new_set_over_quota(self, name: str, store: TenantStore) -> None:
        """Fail fast, before the documents are embedded, when the tenant already holds its
        quota of sets and `name` would be a new one (the store still decides atomically)."""
        limit = self._quota.max_context_sets
        if not limit:
            return
        usage = await store.usage()
        if usage.context_sets < limit:
            return
        with contextlib.suppress(NotFoundError):
            await store.get_summary(name)
            return  # a new revision of an existing set adds no set
        self._metrics.quota_refusals.labels("context_sets").inc()
        raise QuotaExceededError("context_sets", usage=usage.context_sets, needed=1, limit=limit)

    async def _observe_usage(self, tenant: str, store: TenantStore) -> None:
        """Refresh the tenant's usage gauges (best effort: the write already succeeded)."""
        with contextlib.suppress(UnavailableError):
            usage = await store.usage()
            self._metrics.tenant_usage(tenant, usage.context_sets, usage.stored_bytes)

    @staticmethod
    async def _refuse_existing(name: str, store: TenantStore) -> None:
        """Fail fast, before the documents are sent (the store still decides atomically)."""
        with contextlib.suppress(NotFoundError):
            await store.get_summary(name)
            raise AlreadyExistsError(
                f'context set "{name}" already exists; use replace to rebuild it'
            )

    async def _embed_documents(self, call: ActiveCall, documents: Sequence[str]) -> FloatMatrix:
        """Stage-1 embeddings, each distinct document computed once (oversampling repeats)."""
        unique = list(dict.fromkeys(documents))
        async with self._admission.admit(call.tenant, len(unique), call.deadline):
            encoded = await self._inference.embed_context(unique, timeout_s=call.timeout_s())
        self._metrics.embedded("first", len(unique), int(encoded.token_counts.sum()))
        row_of = {document: row for row, document in enumerate(unique)}
        return encoded.vectors[[row_of[document] for document in documents]]

    async def get_context_set(
        self,
        call: ActiveCall,
        name: str,
        *,
        include_documents: bool = False,
        include_embeddings: bool = False,
    ) -> ContextSetView:
        """Metadata of the active revision (or of `name@N`) and the retained revisions, and
        on request the documents and dataset embeddings."""
        store = self._store_of(call)
        reference = parse_context_set_reference(name)
        fingerprint = (await self._model.info()).fingerprint
        history = await store.get_revisions(reference.name)
        revision = history.active_revision if reference.revision is None else reference.revision
        if not (include_documents or include_embeddings):
            summary = await store.get_summary(reference.name, revision=revision)
            return ContextSetView(
                summary, fingerprint, active_revision=history.active_revision, history=history
            )
        stored = await store.get_context_set(
            reference.name, revision=revision, with_documents=include_documents
        )
        return ContextSetView(
            stored.summary(),
            fingerprint,
            documents=stored.documents if include_documents else (),
            embeddings=stored.embeddings if include_embeddings else None,
            active_revision=history.active_revision,
            history=history,
        )

    async def activate_context_set(
        self, call: ActiveCall, name: str, revision: int
    ) -> ContextSetView:
        """Make a retained revision the one the bare name serves (atomic in the store)."""
        validate_context_set_name(name)
        if revision < 1:
            raise InvalidArgumentError("revision must be a revision number (1, 2, ...)")
        summary = await self._store_of(call).activate_context_set(name, revision)
        return ContextSetView(summary, await self._fingerprint_if_known())

    async def list_context_sets(
        self, call: ActiveCall, *, page_size: int, page_token: str, all_tenants: bool = False
    ) -> ContextSetPage:
        """One page of the tenant's sets (with all_tenants, an admin's: everyone's) by name."""
        store: Store = self._store_of(call)
        if all_tenants:
            if not call.admin:
                self._metrics.rejections.labels("permission_denied").inc()
                raise PermissionDeniedError("all_tenants needs an admin API key")
            store = self._store  # names come back as "tenant/name"
        summaries, next_token = await pagination.list_page(
            store, requested_size=page_size, page_token=page_token
        )
        return ContextSetPage(summaries, next_token, await self._fingerprint_if_known())

    async def delete_context_set(self, call: ActiveCall, name: str) -> None:
        """Delete a set, or one inactive revision given as `name@N` (NOT_FOUND if absent;
        FAILED_PRECONDITION for the active revision alone)."""
        reference: ContextSetReference = parse_context_set_reference(name)
        store = self._store_of(call)
        await store.delete_context_set(reference.name, revision=reference.revision)
        await self._observe_usage(call.tenant, store)

    # --- prompts ------------------------------------------------------------------------------
    async def list_prompts(self, call: ActiveCall) -> list[Prompt]:
        """Built-ins, then custom prompts by name."""
        return await self._prompts_of(call).list()

    async def put_prompt(self, call: ActiveCall, name: str, text: str) -> Prompt:
        """Create or replace a custom prompt."""
        return await self._prompts_of(call).put(name, text)

    async def delete_prompt(self, call: ActiveCall, name: str) -> None:
        """Delete a custom prompt."""
        await self._prompts_of(call).delete(name)

    # --- model --------------------------------------------------------------------------------
    async def model_info(self) -> ServedModelInfo:
        """The served model (its limits: `advertised_limits`)."""
        return await self._model.info()

    def advertised_limits(self) -> dict[str, int]:
        """The limits GetModelInfo and GET /v1/model-info report, by their proto field names."""
        s = self.settings
        return {
            "max_texts_per_request": s.max_texts_per_request,
            "max_text_bytes": s.max_text_bytes,
            "max_message_bytes": s.max_message_bytes,
            "max_context_documents": s.max_context_documents,
            "max_concurrent_streams": s.max_concurrent_streams,
            "max_context_bytes": s.max_context_bytes,
        }

    async def _fingerprint_if_known(self) -> str:
        """The served model's fingerprint; "" when Triton cannot say (listing still works)."""
        try:
            return (await self._model.info()).fingerprint
        except UnavailableError:
            cached = self._model.cached_info
            return cached.fingerprint if cached is not None else ""

    # --- streaming calls ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def stream_slot(self, call: ActiveCall) -> AsyncIterator[None]:
        """Count a streaming call against max_concurrent_streams and its tenant's limit
        (RESOURCE_EXHAUSTED beyond either)."""
        limit = self.settings.max_concurrent_streams
        if self._open_streams >= limit:
            self._metrics.rejections.labels("streams").inc()
            raise ResourceExhaustedError(
                f"{limit} streams are open (the limit); retry later", retry_after=1.0
            )
        try:
            self._limiter.acquire_stream(call.tenant)
        except ResourceExhaustedError:
            self._metrics.rejections.labels("tenant_streams").inc()
            raise
        self._open_streams += 1
        self._metrics.open_streams.inc()
        try:
            yield
        finally:
            self._limiter.release_stream(call.tenant)
            self._open_streams -= 1
            self._metrics.open_streams.dec()
