"""Redis store: context sets shared by several gateways.

Key layout (`prefix` defaults to "cde:"; a tenant's names are "tenant/name", see tenancy):
- `{prefix}context_set:{name}`: hash with `meta` (JSON), `revision`, `embeddings`
  (float32 little-endian bytes) and `documents` (JSON array).
- `{prefix}context_sets`: sorted set of names (all score 0) for lexicographic paging.
- `{prefix}prompts`: hash of custom prompt name → text.
Create/replace and delete run as Lua scripts, so they are atomic for every reader and
writer; a read of one set is a single HMGET, so it never sees half a replace.
Short socket timeouts make an outage fail fast (a hung Redis costs one `socket_timeout`).
A write that fails with `StoreUnavailableError` may still have been applied (its reply was
lost): callers must treat its outcome as unknown; retrying is safe.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cde_server.errors import (
    AlreadyExistsError,
    InternalError,
    NotFoundError,
    StoreUnavailableError,
)
from cde_server.stores import records, redacted_url
from cde_server.stores.base import (
    NAMESPACE_SEPARATOR,
    ContextSetSummary,
    StoredContextSet,
    in_namespace,
)

DEFAULT_PREFIX = "cde:"
DEFAULT_SOCKET_TIMEOUT_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
OP_MARKER_TTL_S = 300
# One immediate retry, on broken connections only (e.g. pooled ones to a Redis that
# restarted); a timeout is not retried, so a hung Redis fails after one socket_timeout.
_RETRY_BROKEN_CONNECTIONS_ONCE = Retry(
    NoBackoff(), retries=1, supported_errors=(redis_errors.ConnectionError,)
)

# Every write script takes an operation key, `{prefix}op:{random id}`, as its last KEY: the
# client retries a command once when a connection breaks (e.g. a pooled connection to a Redis
# that restarted), and a command whose reply was lost may already have run. The marker (kept
# OP_MARKER_TTL_S seconds) makes the retry return the first run's result instead of, say,
# ALREADY_EXISTS for the caller's own create.

# KEYS: set hash, names zset, op marker. ARGV: name, replace ("1"/"0"), meta, embeddings,
# documents, marker TTL. Returns the new revision, or -1 when the name exists and replace is "0".
_CREATE_SCRIPT = """
local done = redis.call('GET', KEYS[3])
if done then
    return tonumber(done)
end
local current = redis.call('HGET', KEYS[1], 'revision')
if current and ARGV[2] ~= '1' then
    return -1
end
local revision = (tonumber(current) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'revision', revision,
           'embeddings', ARGV[4], 'documents', ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('SET', KEYS[3], revision, 'EX', ARGV[6])
return revision
"""

# KEYS: set hash, names zset, op marker. ARGV: name, marker TTL. Returns 1 if deleted, else 0.
_DELETE_SET_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then
    return 1
end
if redis.call('DEL', KEYS[1]) == 0 then
    return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], 1, 'EX', ARGV[2])
return 1
"""

# KEYS: prompts hash, op marker. ARGV: name, marker TTL. Returns 1 if deleted, else 0.
_DELETE_PROMPT_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 1
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('SET', KEYS[2], 1, 'EX', ARGV[2])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """`Store` over a Redis server (redis://, rediss:// or unix:// URL)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, display_url: str) -> None:
        """Wrap a client; prefer `RedisStore.from_url`."""
        self._client = client
        self._prefix = prefix
        self._display_url = display_url
        self._names_key = f"{prefix}context_sets"
        self._prompts_key = f"{prefix}prompts"
        self._create_script = client.register_script(_CREATE_SCRIPT)
        self._delete_set_script = client.register_script(_DELETE_SET_SCRIPT)
        self._delete_prompt_script = client.register_script(_DELETE_PROMPT_SCRIPT)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Client for `url`; does not connect yet (use `ping`).

        Query parameters: `prefix` (key prefix, default "cde:"), and any redis-py URL
        option such as `socket_timeout` / `socket_connect_timeout` (default 2 s each).
        """
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", DEFAULT_PREFIX)
        query.setdefault("socket_timeout", str(DEFAULT_SOCKET_TIMEOUT_S))
        query.setdefault("socket_connect_timeout", str(DEFAULT_CONNECT_TIMEOUT_S))
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            client = aioredis.Redis.from_url(
                client_url,
                retry=_RETRY_BROKEN_CONNECTIONS_ONCE,
                decode_responses=False,
            )
        except ValueError as exc:
            raise StoreUnavailableError(f"invalid Redis URL {redacted_url(url)}: {exc}") from exc
        return cls(client, prefix=prefix, display_url=redacted_url(url))

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Turn client and connection failures into `StoreUnavailableError`."""
        try:
            yield
        except (redis_errors.RedisError, OSError) as exc:
            raise StoreUnavailableError(
                f"Redis store {self._display_url} unavailable: {exc or type(exc).__name__}"
            ) from exc

    def _set_key(self, name: str) -> str:
        return f"{self._prefix}context_set:{name}"

    def _op_key(self) -> str:
        return f"{self._prefix}op:{uuid.uuid4().hex}"

    # -- context sets ---------------------------------------------------------------------

    async def create_context_set(
        self, context_set: StoredContextSet, *, replace: bool
    ) -> StoredContextSet:
        """Insert or atomically replace; see `Store.create_context_set`."""
        async with self._guard():
            revision = int(
                await self._create_script(
                    keys=[self._set_key(context_set.name), self._names_key, self._op_key()],
                    args=[
                        context_set.name,
                        "1" if replace else "0",
                        records.encode_metadata(context_set),
                        records.encode_embeddings(context_set.embeddings),
                        records.encode_documents(context_set.documents),
                        OP_MARKER_TTL_S,
                    ],
                )
            )
        if revision < 0:
            raise AlreadyExistsError(
                f'context set "{context_set.name}" already exists; use replace to rebuild it'
            )
        return context_set.with_revision(revision)

    async def get_context_set(self, name: str, *, with_documents: bool = False) -> StoredContextSet:
        """The set with embeddings (and documents if asked); `NotFoundError` if absent."""
        fields = ["meta", "revision", "embeddings"] + (["documents"] if with_documents else [])
        async with self._guard():
            values: list[Any] = await self._client.hmget(self._set_key(name), fields)
        if values[0] is None:
            raise NotFoundError(f'context set "{name}" not found')
        try:
            summary = records.decode_metadata(values[0], int(values[1]))
            embeddings = records.decode_embeddings(
                values[2], summary.context_size, summary.embedding_dim
            )
            documents = records.decode_documents(values[3]) if with_documents else ()
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f'stored context set "{name}" is corrupt: {exc}') from exc
        return records.assemble(summary, embeddings, documents)

    async def get_summary(self, name: str) -> ContextSetSummary:
        """The set's metadata (reads neither embeddings nor documents)."""
        async with self._guard():
            values: list[Any] = await self._client.hmget(self._set_key(name), ["meta", "revision"])
        meta, revision = values
        if meta is None:
            raise NotFoundError(f'context set "{name}" not found')
        return self._summary(name, meta, revision)

    def _summary(self, name: str, meta: Any, revision: Any) -> ContextSetSummary:
        try:
            return records.decode_metadata(meta, int(revision))
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f'stored context set "{name}" is corrupt: {exc}') from exc

    async def list_context_sets(
        self, *, after: str | None, limit: int, namespace: str | None = None
    ) -> list[ContextSetSummary]:
        """Up to `limit` summaries in name order with names greater than `after`.

        A tenant's namespace is one lexicographic range of the names index; the bare
        namespace ("") is filtered while paging (it skips over the tenants' names).
        """
        summaries: list[ContextSetSummary] = []
        low, high = "-", "+"
        if namespace:
            low = f"[{namespace}{NAMESPACE_SEPARATOR}"
            high = f"({namespace}{chr(ord(NAMESPACE_SEPARATOR) + 1)}"
        if after and (namespace is None or f"[{after}" > low):
            low = f"({after}"
        async with self._guard():
            while len(summaries) < limit:
                wanted = limit - len(summaries)
                names = [
                    _text(raw)
                    for raw in await self._client.zrange(
                        self._names_key, low, high, bylex=True, offset=0, num=wanted
                    )
                ]
                if not names:
                    break
                kept = [name for name in names if in_namespace(name, namespace)]
                async with self._client.pipeline(transaction=False) as pipe:
                    for name in kept:
                        pipe.hmget(self._set_key(name), ["meta", "revision"])
                    rows = await pipe.execute()
                for name, (meta, revision) in zip(kept, rows, strict=True):
                    if meta is not None:  # skip a set deleted between the two reads
                        summaries.append(self._summary(name, meta, revision))
                if len(names) < wanted:
                    break
                low = f"({names[-1]}"
        return summaries

    async def delete_context_set(self, name: str) -> None:
        """Delete the set; `NotFoundError` if absent."""
        async with self._guard():
            deleted = int(
                await self._delete_set_script(
                    keys=[self._set_key(name), self._names_key, self._op_key()],
                    args=[name, OP_MARKER_TTL_S],
                )
            )
        if not deleted:
            raise NotFoundError(f'context set "{name}" not found')

    # -- prompts --------------------------------------------------------------------------

    async def list_prompts(self, *, namespace: str | None = None) -> dict[str, str]:
        """Custom prompts (of one namespace, if given). A tenant's are matched by Redis (HSCAN),
        so no tenant's call transfers the others' prompts."""
        async with self._guard():
            if namespace:
                pattern = _glob_escape(namespace + NAMESPACE_SEPARATOR) + "*"
                raw = {
                    name: text
                    async for name, text in self._client.hscan_iter(
                        self._prompts_key, match=pattern, count=1000
                    )
                }
            else:
                raw = await self._client.hgetall(self._prompts_key)
        prompts = {_text(name): _text(text) for name, text in sorted(raw.items())}
        return {name: text for name, text in prompts.items() if in_namespace(name, namespace)}

    async def get_prompt(self, name: str) -> str:
        """One custom prompt's text; `NotFoundError` if absent."""
        async with self._guard():
            text = await self._client.hget(self._prompts_key, name)
        if text is None:
            raise NotFoundError(f'prompt "{name}" not found')
        return _text(text)

    async def put_prompt(self, name: str, text: str) -> None:
        """Create or replace a custom prompt."""
        async with self._guard():
            await self._client.hset(self._prompts_key, name, text)

    async def delete_prompt(self, name: str) -> None:
        """Delete a custom prompt; `NotFoundError` if absent."""
        async with self._guard():
            deleted = int(
                await self._delete_prompt_script(
                    keys=[self._prompts_key, self._op_key()], args=[name, OP_MARKER_TTL_S]
                )
            )
        if not deleted:
            raise NotFoundError(f'prompt "{name}" not found')

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that Redis answers."""
        async with self._guard():
            await self._client.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore({self._display_url!r}, prefix={self._prefix!r})"


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis glob pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
