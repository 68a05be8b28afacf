"""Per-tenant namespaces over a `Store`: tenant t's set or prompt "docs" is stored as "t/docs".

Tenant "" (authentication off) uses bare names, so data written before tenants existed stays
where it was. Names cannot contain "/" (see names.py), so no tenant can reach another's
records; errors name the bare name only, and another tenant's record is simply absent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from cde_server.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from cde_server.stores.base import (
    DEFAULT_REVISIONS_KEPT,
    NAMESPACE_SEPARATOR,
    ContextSetSummary,
    RevisionHistory,
    Store,
    StoredContextSet,
    StoreQuota,
    StoreUsage,
)


def qualified_name(tenant: str, name: str) -> str:
    """The stored name of tenant `tenant`'s `name`."""
    return f"{tenant}{NAMESPACE_SEPARATOR}{name}" if tenant else name


class TenantStore:
    """A `Store` that sees only one tenant's context sets and prompts, under their bare names."""

    def __init__(self, store: Store, tenant: str) -> None:
        self._store = store
        self.tenant = tenant
        self._prefix = f"{tenant}{NAMESPACE_SEPARATOR}" if tenant else ""

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _bare(self, name: str) -> str:
        return name.removeprefix(self._prefix)

    @contextmanager
    def _bare_errors(self, name: str) -> Iterator[None]:
        """Re-raise not-found / already-exists errors naming `name`, not its stored key."""
        if not self._prefix:
            yield
            return
        try:
            yield
        except (NotFoundError, AlreadyExistsError, FailedPreconditionError) as exc:
            message = exc.message.replace(f'"{self._key(name)}"', f'"{name}"')
            raise type(exc)(message) from None

    async def create_context_set(
        self,
        context_set: StoredContextSet,
        *,
        replace: bool,
        activate: bool = True,
        keep: int = DEFAULT_REVISIONS_KEPT,
        quota: StoreQuota | None = None,
    ) -> StoredContextSet:
        """See `Store.create_context_set` (`quota` applies to this tenant's sets)."""
        name = context_set.name
        with self._bare_errors(name):
            stored = await self._store.create_context_set(
                dataclasses.replace(context_set, name=self._key(name)),
                replace=replace,
                activate=activate,
                keep=keep,
                quota=quota,
            )
        return dataclasses.replace(stored, name=name)

    async def get_context_set(
        self, name: str, *, revision: int | None = None, with_documents: bool = False
    ) -> StoredContextSet:
        """See `Store.get_context_set`."""
        with self._bare_errors(name):
            stored = await self._store.get_context_set(
                self._key(name), revision=revision, with_documents=with_documents
            )
        return dataclasses.replace(stored, name=name)

    async def get_summary(self, name: str, *, revision: int | None = None) -> ContextSetSummary:
        """See `Store.get_summary`."""
        with self._bare_errors(name):
            summary = await self._store.get_summary(self._key(name), revision=revision)
        return dataclasses.replace(summary, name=name)

    async def get_revisions(self, name: str) -> RevisionHistory:
        """See `Store.get_revisions`."""
        with self._bare_errors(name):
            history = await self._store.get_revisions(self._key(name))
        return dataclasses.replace(
            history,
            name=name,
            revisions=tuple(dataclasses.replace(r, name=name) for r in history.revisions),
        )

    async def activate_context_set(self, name: str, revision: int) -> ContextSetSummary:
        """See `Store.activate_context_set`."""
        with self._bare_errors(name):
            summary = await self._store.activate_context_set(self._key(name), revision)
        return dataclasses.replace(summary, name=name)

    async def list_context_sets(
        self, *, after: str | None, limit: int, namespace: str | None = None
    ) -> list[ContextSetSummary]:
        """This tenant's sets (`namespace` is ignored: it is always the tenant's)."""
        summaries = await self._store.list_context_sets(
            after=None if after is None else self._key(after), limit=limit, namespace=self.tenant
        )
        return [dataclasses.replace(s, name=self._bare(s.name)) for s in summaries]

    async def delete_context_set(self, name: str, *, revision: int | None = None) -> None:
        """See `Store.delete_context_set`."""
        with self._bare_errors(name):
            await self._store.delete_context_set(self._key(name), revision=revision)

    async def usage(self, namespace: str = "") -> StoreUsage:
        """This tenant's usage (`namespace` is ignored)."""
        return await self._store.usage(self.tenant)

    async def list_prompts(self, *, namespace: str | None = None) -> dict[str, str]:
        """This tenant's custom prompts (`namespace` is ignored)."""
        prompts = await self._store.list_prompts(namespace=self.tenant)
        return {self._bare(name): text for name, text in prompts.items()}

    async def get_prompt(self, name: str) -> str:
        """See `Store.get_prompt`."""
        with self._bare_errors(name):
            return await self._store.get_prompt(self._key(name))

    async def put_prompt(self, name: str, text: str) -> None:
        """See `Store.put_prompt`."""
        await self._store.put_prompt(self._key(name), text)

    async def delete_prompt(self, name: str) -> None:
        """See `Store.delete_prompt`."""
        with self._bare_errors(name):
            await self._store.delete_prompt(self._key(name))

    async def ping(self) -> None:
        """See `Store.ping`."""
        await self._store.ping()

    async def close(self) -> None:
        """Nothing to do: the shared store is closed by its owner."""
