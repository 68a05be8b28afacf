"""Persistence of context sets and custom prompts: SQLite (default) or Redis (shared).

`open_store(url)` picks the backend from the URL:
- `sqlite:///abs/path.db` (absolute), `sqlite://rel/path.db` (relative to the working
  directory), `sqlite://:memory:` (throwaway), or a bare file path;
- `redis://[user:password@]host:port/db`, `rediss://...` (TLS), `unix:///path/to/socket`,
  with optional query parameters `prefix`, `socket_timeout`, `socket_connect_timeout`.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from cde_server.errors import StoreUnavailableError
from cde_server.stores.base import SAMPLINGS, ContextSetSummary, Sampling, Store, StoredContextSet

__all__ = [
    "SAMPLINGS",
    "ContextSetSummary",
    "Sampling",
    "Store",
    "StoredContextSet",
    "open_store",
    "redacted_url",
    "sqlite_path",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
logger = logging.getLogger("cde_server.stores")


def redacted_url(url: str) -> str:
    """The store URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str:
    """The file path (or ":memory:") named by a `sqlite://` URL or a bare path."""
    path = url.removeprefix("sqlite://")
    if path in ("", "/"):
        raise StoreUnavailableError(f"store URL {url!r} names no SQLite file")
    if path == "/:memory:":
        return ":memory:"
    return path


async def open_store(url: str) -> Store:
    """Open the store named by `url` (see the module docstring).

    SQLite opens (and creates, or migrates in place) the file at once. Redis connects
    lazily, so call `ping()` to check it; revisions written before schema version 3 are
    compacted here when Redis answers (else at a later open). Unusable URLs or files raise
    `StoreUnavailableError`.
    """
    if url.startswith(_REDIS_SCHEMES):
        from cde_server.stores.redis import RedisStore

        store = RedisStore.from_url(url)
        try:  # best effort: both layouts are readable, a later start finishes the job
            upgraded = await store.upgrade_layout()
        except StoreUnavailableError as exc:
            logger.warning("Redis layout upgrade postponed (next start): %s", exc.message)
        else:
            if upgraded:
                logger.info("upgraded %d Redis context-set revisions to compact form", upgraded)
        return store
    if "://" in url and not url.startswith("sqlite://"):
        raise StoreUnavailableError(
            f"unsupported store URL {url!r}: use sqlite:///path/to/file.db or redis://host:port/0"
        )
    from cde_server.stores.sqlite import SqliteStore

    return await SqliteStore.connect(sqlite_path(url))
