"""Redis store: context sets shared by several gateways.

Key layout (`prefix` defaults to "cde:"; a tenant's names are "tenant/name", see tenancy):
- `{prefix}context_set:{name}`: hash of the set's ACTIVE revision, with `meta` (JSON, also
  the idempotency key and request fingerprint of the create that made it), `revision`, and
  the compact payload (`records.Compacted`): `embeddings` (distinct float32 little-endian
  rows), `documents` (JSON array of the distinct documents) and `sample` (uint32 indices).
- `{prefix}context_revision:{name}@{N}`: hash of the same fields for an inactive retained
  revision N; `{prefix}context_revisions:{name}`: sorted set of those numbers (score N).
- `{prefix}context_revision_counters`: hash name → highest revision number ever given
  (kept after a delete, so numbers are never reused; absent: the active `revision`).
- `{prefix}context_sets`: sorted set of names (all score 0) for lexicographic paging.
- `{prefix}prompts`: hash of custom prompt name → text.
Older layouts are this one without `sample` (N rows, N documents; before revisions also
without inactive revisions): they stay readable, and `upgrade_layout` (run by `open_store`)
rewrites them in compact form in place. Activation swaps hashes with RENAME (no copy).
A tenant's usage (for its quota) is summed by the create script itself from HSTRLEN of the
payload fields of every retained revision of its names, so it needs no counter to keep.
Create, activate, prune and delete run as Lua scripts, so they are atomic for every reader
and writer; a read of one set by name is a single HMGET, and by name@N one read-only script
call, so it never sees half a replace.
Short socket timeouts make an outage fail fast (a hung Redis costs one `socket_timeout`).
A write that fails with `StoreUnavailableError` may still have been applied (its reply was
lost): callers must treat its outcome as unknown; retrying is safe.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
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
    DEFAULT_REVISIONS_KEPT,
    NAMESPACE_SEPARATOR,
    ContextSetSummary,
    RevisionHistory,
    StoredContextSet,
    StoreQuota,
    StoreUsage,
    active_revision_error,
    check_quota,
    idempotency_mismatch_error,
    in_namespace,
    missing_revision_error,
    namespace_of,
)

logger = logging.getLogger("cde_server.stores.redis")

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

# Lua helpers of the create and usage scripts. ARGV[1..3] of those scripts: the key prefixes
# of active hashes ("{prefix}context_set:"), of inactive zsets ("{prefix}context_revisions:")
# and of inactive revision hashes ("{prefix}context_revision:"); KEYS[2] is the names zset.
_USAGE_FUNCTIONS = """
local function revision_bytes(key)
    return redis.call('HSTRLEN', key, 'embeddings') + redis.call('HSTRLEN', key, 'documents')
        + redis.call('HSTRLEN', key, 'sample')
end
local function namespace_names(namespace)
    if namespace ~= '' then
        return redis.call('ZRANGE', KEYS[2], '[' .. namespace .. '/', '(' .. namespace .. '0',
                          'BYLEX')
    end
    local names = {}
    for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
        if not string.find(name, '/', 1, true) then
            names[#names + 1] = name
        end
    end
    return names
end
local function usage(namespace)
    local names = namespace_names(namespace)
    local total = 0
    for _, name in ipairs(names) do
        total = total + revision_bytes(ARGV[1] .. name)
        for _, member in ipairs(redis.call('ZRANGE', ARGV[2] .. name, 0, -1)) do
            total = total + revision_bytes(ARGV[3] .. name .. '@' .. member)
        end
    end
    return #names, total
end
"""

# KEYS: unused, names zset. ARGV: the three key prefixes, namespace. Returns {sets, bytes}.
_USAGE_SCRIPT = (
    _USAGE_FUNCTIONS
    + """
local sets, total = usage(ARGV[4])
return {sets, total}
"""
)

# KEYS: active hash, names zset, inactive zset, counters hash, op marker. ARGV: the three key
# prefixes, name, replace ("1"/"0"), activate ("1"/"0"), meta, embeddings, documents, sample,
# marker TTL, revisions kept, idempotency key ("": none), request fingerprint, max context
# sets and max stored bytes of the name's namespace (0: no limit), namespace. Replies:
# {"created", N}; {"replayed", N} (a retained revision has this idempotency key and
# fingerprint; nothing written); {"key_mismatch", N} (it has this key, another fingerprint);
# {"exists"} (the name exists and replace is "0"); {"quota", sets and bytes before, sets and
# bytes after} (past a limit; nothing written). Inactive revisions below the `kept` highest
# numbers are deleted; the bytes they free count for the quota.
_CREATE_SCRIPT = (
    _USAGE_FUNCTIONS
    + """
local done = redis.call('GET', KEYS[5])
if done then
    return {'created', tonumber(done)}
end
local name, prefix = ARGV[4], ARGV[3] .. ARGV[4] .. '@'
local active = tonumber(redis.call('HGET', KEYS[1], 'revision'))
local inactive = redis.call('ZRANGE', KEYS[3], 0, -1)
if active and ARGV[13] ~= '' then
    local earlier, fingerprint = nil, nil
    local keys = {KEYS[1]}
    for _, member in ipairs(inactive) do
        keys[#keys + 1] = prefix .. member
    end
    for _, key in ipairs(keys) do
        local fields = redis.call('HMGET', key, 'meta', 'revision')
        if fields[1] then
            local meta = cjson.decode(fields[1])
            local number = tonumber(fields[2])
            if meta['idempotency_key'] == ARGV[13] and (not earlier or number > earlier) then
                earlier, fingerprint = number, meta['request_fingerprint']
            end
        end
    end
    if earlier then
        return {fingerprint == ARGV[14] and 'replayed' or 'key_mismatch', earlier}
    end
end
if active and ARGV[5] ~= '1' then
    return {'exists'}
end
local revision = math.max(tonumber(redis.call('HGET', KEYS[4], name)) or 0, active or 0) + 1
local new_active = revision
if active and ARGV[6] ~= '1' then
    new_active = active
end
local numbers = {revision}
local key_of = {}
for _, member in ipairs(inactive) do
    numbers[#numbers + 1] = tonumber(member)
    key_of[tonumber(member)] = prefix .. member
end
if active then
    numbers[#numbers + 1] = active
    key_of[active] = KEYS[1]
end
table.sort(numbers, function(a, b) return a > b end)
local keep = math.max(tonumber(ARGV[12]), 1)
local pruned = {}
for index = keep + 1, #numbers do
    if numbers[index] ~= new_active then
        pruned[#pruned + 1] = numbers[index]
    end
end
local max_sets, max_bytes = tonumber(ARGV[15]), tonumber(ARGV[16])
if max_sets > 0 or max_bytes > 0 then
    local sets, total = usage(ARGV[17])
    local sets_after = sets + (active and 0 or 1)
    local total_after = total + string.len(ARGV[8]) + string.len(ARGV[9]) + string.len(ARGV[10])
    for _, number in ipairs(pruned) do
        total_after = total_after - revision_bytes(key_of[number])
    end
    if (max_sets > 0 and sets_after > max_sets and sets_after > sets)
        or (max_bytes > 0 and total_after > max_bytes and total_after > total) then
        return {'quota', sets, total, sets_after, total_after}
    end
end
redis.call('HSET', KEYS[4], name, revision)
local target = KEYS[1]
if active and new_active == revision then
    redis.call('RENAME', KEYS[1], prefix .. active)
    redis.call('ZADD', KEYS[3], active, active)
elseif active then
    target = prefix .. revision
    redis.call('ZADD', KEYS[3], revision, revision)
end
redis.call('HSET', target, 'meta', ARGV[7], 'revision', revision, 'embeddings', ARGV[8],
           'documents', ARGV[9], 'sample', ARGV[10])
for _, number in ipairs(pruned) do
    redis.call('DEL', prefix .. number)
    redis.call('ZREM', KEYS[3], number)
end
redis.call('ZADD', KEYS[2], 0, name)
redis.call('SET', KEYS[5], revision, 'EX', ARGV[11])
return {'created', revision}
"""
)

# KEYS: a revision hash. ARGV: its expected revision, then the compact embeddings, documents
# and sample. Rewrites a hash of the layout before schema version 3 (N rows, N documents, no
# sample) in compact form; 0 when it is compact already or holds another revision now.
_COMPACT_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'sample') == 1 then
    return 0
end
if redis.call('HGET', KEYS[1], 'revision') ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'embeddings', ARGV[2], 'documents', ARGV[3], 'sample', ARGV[4])
return 1
"""

# KEYS: active hash, inactive zset. ARGV: revision, revision key prefix. Returns 1 when the
# revision is (now) active, 0 when it is not retained, -1 when the set does not exist.
_ACTIVATE_SCRIPT = """
local active = redis.call('HGET', KEYS[1], 'revision')
if not active then
    return -1
end
if tonumber(active) == tonumber(ARGV[1]) then
    return 1
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 0
end
redis.call('RENAME', KEYS[1], ARGV[2] .. active)
redis.call('ZADD', KEYS[2], active, active)
redis.call('RENAME', ARGV[2] .. ARGV[1], KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: active hash, names zset, inactive zset, counters hash, op marker. ARGV: name, marker
# TTL, revision key prefix. Returns 1 if deleted, else 0.
_DELETE_SET_SCRIPT = """
if redis.call('EXISTS', KEYS[5]) == 1 then
    return 1
end
local active = redis.call('HGET', KEYS[1], 'revision')
if not active then
    return 0
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    redis.call('DEL', ARGV[3] .. member)
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(active) > (tonumber(redis.call('HGET', KEYS[4], ARGV[1])) or 0) then
    redis.call('HSET', KEYS[4], ARGV[1], active)
end
redis.call('SET', KEYS[5], 1, 'EX', ARGV[2])
return 1
"""

# KEYS: active hash, inactive zset, op marker. ARGV: revision, marker TTL, revision key
# prefix. Returns 1 if deleted, 0 when the set is absent, -1 when the revision is, -2 when
# it is the active one.
_DELETE_REVISION_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then
    return 1
end
local active = redis.call('HGET', KEYS[1], 'revision')
if not active then
    return 0
end
if tonumber(active) == tonumber(ARGV[1]) then
    return -2
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
    return -1
end
redis.call('DEL', ARGV[3] .. ARGV[1])
redis.call('SET', KEYS[3], 1, 'EX', ARGV[2])
return 1
"""

# KEYS: inactive revision hash, active hash. ARGV: revision, then the fields to read.
# Returns the fields of revision ARGV[1] (whether inactive or active), or nil.
_READ_REVISION_SCRIPT = """
local fields = {}
for i = 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
end
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('HMGET', KEYS[1], unpack(fields))
end
if redis.call('HGET', KEYS[2], 'revision') == ARGV[1] then
    return redis.call('HMGET', KEYS[2], unpack(fields))
end
return false
"""

# KEYS: active hash, inactive zset, counters hash. ARGV: name, revision key prefix. Returns
# nil when the set is absent, else {active revision, counter or false, active meta, then
# revision and meta of each inactive revision}.
_HISTORY_SCRIPT = """
local head = redis.call('HMGET', KEYS[1], 'revision', 'meta')
if not head[1] then
    return false
end
local reply = {head[1], redis.call('HGET', KEYS[3], ARGV[1]), head[2]}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local meta = redis.call('HGET', ARGV[2] .. member, 'meta')
    if meta then
        reply[#reply + 1] = member
        reply[#reply + 1] = meta
    end
end
return reply
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
        self._counters_key = f"{prefix}context_revision_counters"
        self._create_script = client.register_script(_CREATE_SCRIPT)
        self._activate_script = client.register_script(_ACTIVATE_SCRIPT)
        self._delete_set_script = client.register_script(_DELETE_SET_SCRIPT)
        self._delete_revision_script = client.register_script(_DELETE_REVISION_SCRIPT)
        self._read_revision_script = client.register_script(_READ_REVISION_SCRIPT)
        self._history_script = client.register_script(_HISTORY_SCRIPT)
        self._delete_prompt_script = client.register_script(_DELETE_PROMPT_SCRIPT)
        self._usage_script = client.register_script(_USAGE_SCRIPT)
        self._compact_script = client.register_script(_COMPACT_SCRIPT)
        self._key_prefixes = [
            f"{prefix}context_set:",
            f"{prefix}context_revisions:",
            f"{prefix}context_revision:",
        ]

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
        return self._key_prefixes[0] + name

    def _inactive_key(self, name: str) -> str:
        return self._key_prefixes[1] + name

    def _revision_prefix(self, name: str) -> str:
        return f"{self._key_prefixes[2]}{name}@"

    def _op_key(self) -> str:
        return f"{self._prefix}op:{uuid.uuid4().hex}"

    def _set_write_keys(self, name: str) -> list[str]:
        """KEYS of the scripts that write a whole set: active hash, names zset, inactive
        zset, counters hash, a fresh op marker."""
        return [
            self._set_key(name),
            self._names_key,
            self._inactive_key(name),
            self._counters_key,
            self._op_key(),
        ]

    # -- context sets ---------------------------------------------------------------------

    async def create_context_set(
        self,
        context_set: StoredContextSet,
        *,
        replace: bool,
        activate: bool = True,
        keep: int = DEFAULT_REVISIONS_KEPT,
        quota: StoreQuota | None = None,
    ) -> StoredContextSet:
        """Add a revision atomically; see `Store.create_context_set`."""
        name = context_set.name
        payload = records.compact(context_set.embeddings, context_set.documents)
        limits = quota or StoreQuota()
        async with self._guard():
            reply = await self._create_script(
                keys=self._set_write_keys(name),
                args=[
                    *self._key_prefixes,
                    name,
                    "1" if replace else "0",
                    "1" if activate else "0",
                    records.encode_metadata(context_set),
                    payload.embeddings,
                    payload.documents,
                    payload.sample,
                    OP_MARKER_TTL_S,
                    keep,
                    context_set.idempotency_key,
                    context_set.request_fingerprint,
                    limits.max_context_sets,
                    limits.max_stored_bytes,
                    namespace_of(name),
                ],
            )
        outcome, numbers = _text(reply[0]), [int(value) for value in reply[1:]]
        if outcome == "created":
            return context_set.with_revision(numbers[0])
        if outcome == "replayed":
            return await self.get_context_set(name, revision=numbers[0], with_documents=True)
        if outcome == "key_mismatch":
            raise idempotency_mismatch_error(name, context_set.idempotency_key, numbers[0])
        if outcome == "exists":
            raise AlreadyExistsError(
                f'context set "{name}" already exists; use replace to rebuild it'
            )
        check_quota(quota, StoreUsage(*numbers[:2]), StoreUsage(*numbers[2:]))
        raise InternalError(f"unexpected create reply {reply!r}")

    async def usage(self, namespace: str) -> StoreUsage:
        """What `namespace` holds (one script call); see `Store.usage`."""
        async with self._guard():
            sets, stored = await self._usage_script(
                keys=["", self._names_key], args=[*self._key_prefixes, namespace]
            )
        return StoreUsage(int(sets), int(stored))

    async def upgrade_layout(self) -> int:
        """Rewrite revisions stored before schema version 3 in compact form; returns how
        many. Each is rewritten atomically and only if unchanged meanwhile; readers see
        either form (both decode to the same set), so this may run beside live traffic."""
        upgraded = 0
        async with self._guard():
            for key_prefix in (self._key_prefixes[0], self._key_prefixes[2]):
                pattern = _glob_escape(key_prefix) + "*"
                async for key in self._client.scan_iter(match=pattern, count=1000):
                    if await self._client.hexists(key, "sample"):
                        continue
                    revision, meta, sample, blob, documents = await self._client.hmget(
                        key, ["revision", "meta", "sample", "embeddings", "documents"]
                    )
                    if revision is None or blob is None or documents is None or sample:
                        continue
                    try:
                        summary = self._summary(_text(key), meta, revision)
                        payload = records.compact_legacy(
                            cast(bytes, blob),
                            documents,
                            summary.context_size,
                            summary.embedding_dim,
                        )
                    except (InternalError, ValueError) as exc:  # left as is; reads report it
                        logger.warning("not compacting corrupt %s: %s", _text(key), exc)
                        continue
                    upgraded += int(
                        await self._compact_script(
                            keys=[key],
                            args=[revision, payload.embeddings, payload.documents, payload.sample],
                        )
                    )
        return upgraded

    async def _read(self, name: str, revision: int | None, fields: list[str]) -> list[Any]:
        """The fields of the active revision or of `revision`, in one round trip."""
        async with self._guard():
            if revision is None:
                values: list[Any] | None = await self._client.hmget(self._set_key(name), fields)
            else:
                values = await self._read_revision_script(
                    keys=[self._revision_prefix(name) + str(revision), self._set_key(name)],
                    args=[revision, *fields],
                )
        if not values or values[0] is None:
            raise await self._missing(name, revision)
        return values

    async def _missing(self, name: str, revision: int | None) -> NotFoundError:
        """The NOT_FOUND error for a read that found nothing."""
        if revision is None:
            return NotFoundError(f'context set "{name}" not found')
        try:
            history = await self.get_revisions(name)
        except NotFoundError as exc:
            return exc
        return missing_revision_error(
            name,
            revision,
            history.latest_revision,
            [r.revision for r in history.revisions],
            history.active_revision,
        )

    async def get_context_set(
        self, name: str, *, revision: int | None = None, with_documents: bool = False
    ) -> StoredContextSet:
        """The active revision (or `revision`) with embeddings (and documents if asked)."""
        fields = ["meta", "revision", "embeddings", "sample"]
        values = await self._read(
            name, revision, fields + (["documents"] if with_documents else [])
        )
        try:
            summary = records.decode_metadata(values[0], int(values[1]))
            rows, dim = summary.context_size, summary.embedding_dim
            documents_field = _text(values[4]) if with_documents else "[]"
            if values[3] is None:  # stored before schema version 3: N rows, N documents
                embeddings = records.decode_embeddings(values[2], rows, dim)
                documents = records.decode_documents(documents_field) if with_documents else ()
            else:
                stored = records.Compacted(values[2], documents_field, values[3])
                embeddings, documents = stored.materialize(rows, dim, with_documents=with_documents)
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f'stored context set "{name}" is corrupt: {exc}') from exc
        return records.assemble(summary, embeddings, documents)

    async def get_summary(self, name: str, *, revision: int | None = None) -> ContextSetSummary:
        """The metadata of the active revision (or `revision`), one round trip."""
        meta, stored_revision = await self._read(name, revision, ["meta", "revision"])
        return self._summary(name, meta, stored_revision)

    async def get_revisions(self, name: str) -> RevisionHistory:
        """The retained revisions and the active one (one script call)."""
        async with self._guard():
            reply: list[Any] | None = await self._history_script(
                keys=[self._set_key(name), self._inactive_key(name), self._counters_key],
                args=[name, self._revision_prefix(name)],
            )
        if not reply:
            raise NotFoundError(f'context set "{name}" not found')
        active = int(reply[0])
        latest = max(active, int(reply[1]) if reply[1] else 0)
        summaries = [self._summary(name, reply[2], active)]
        for index in range(3, len(reply), 2):
            summaries.append(self._summary(name, reply[index + 1], reply[index]))
        summaries.sort(key=lambda summary: summary.revision)
        latest = max(latest, summaries[-1].revision)
        return RevisionHistory(
            name=name, active_revision=active, latest_revision=latest, revisions=tuple(summaries)
        )

    async def activate_context_set(self, name: str, revision: int) -> ContextSetSummary:
        """Make a retained revision active; see `Store.activate_context_set`."""
        async with self._guard():
            outcome = int(
                await self._activate_script(
                    keys=[self._set_key(name), self._inactive_key(name)],
                    args=[revision, self._revision_prefix(name)],
                )
            )
        if outcome == -1:
            raise NotFoundError(f'context set "{name}" not found')
        if outcome == 0:
            raise await self._missing(name, revision)
        return await self.get_summary(name, revision=revision)

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

    async def delete_context_set(self, name: str, *, revision: int | None = None) -> None:
        """Delete the set or one inactive revision; see `Store.delete_context_set`."""
        async with self._guard():
            if revision is None:
                outcome = int(
                    await self._delete_set_script(
                        keys=self._set_write_keys(name),
                        args=[name, OP_MARKER_TTL_S, self._revision_prefix(name)],
                    )
                )
            else:
                outcome = int(
                    await self._delete_revision_script(
                        keys=[self._set_key(name), self._inactive_key(name), self._op_key()],
                        args=[revision, OP_MARKER_TTL_S, self._revision_prefix(name)],
                    )
                )
        if outcome == 0:
            raise NotFoundError(f'context set "{name}" not found')
        if outcome == -1 and revision is not None:
            raise await self._missing(name, revision)
        if outcome == -2 and revision is not None:
            raise active_revision_error(name, revision)

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
