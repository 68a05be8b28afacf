"""Schema version 3 in every store backend: each distinct document and embedding row stored
once (plus the sample's indices), upgrades of older stores in place, per-tenant quotas and
idempotent creates."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import redis
from cde_server.domain.tenancy import TenantStore
from cde_server.errors import FailedPreconditionError, StoreUnavailableError
from cde_server.stores import Store, StoredContextSet, open_store
from cde_server.stores.base import QuotaExceededError, StoreQuota, StoreUsage
from cde_server.stores.records import encode_metadata
from cde_server.triton.protocol import context_id
from support.paths import REPO_ROOT
from support.store_fixtures import RedisServer, unique_prefix
from support.store_records import make_set, run, with_store

V2_STORE = REPO_ROOT / "tests" / "data" / "store_v2.db"
DIM = 8


def oversampled(
    name: str, value: float = 1.0, *, rows: int = 64, distinct: int = 3
) -> StoredContextSet:
    """`rows` context positions cycling over `distinct` documents (and their embedding rows)."""
    base = np.arange(distinct * DIM, dtype=np.float32).reshape(distinct, DIM) + value
    order = [i % distinct for i in range(rows)]
    embeddings = base[order]
    return StoredContextSet(
        name=name,
        created_at=make_set(name).created_at,
        model_fingerprint="fp-a",
        prompt="document",
        source_document_count=distinct,
        revision=0,
        sampling="oversampled",
        context_id=context_id(embeddings),
        embeddings=embeddings,
        documents=tuple(f"document {value} number {i} " * 20 for i in order),
    )


def compact_size(context_set: StoredContextSet) -> int:
    """Bytes of the compact form: distinct rows, distinct documents (JSON), 4 per index."""
    rows = {row.tobytes() for row in context_set.embeddings}
    documents = list(dict.fromkeys(context_set.documents))
    indices = context_set.context_size + len(context_set.documents)
    text = json.dumps(documents, ensure_ascii=False).encode()
    return len(rows) * context_set.embedding_dim * 4 + len(text) + 4 * indices


def test_oversampled_set_stores_each_document_once_and_reads_back_exactly(store_url: str) -> None:
    record = oversampled("over")

    async def body(store: Store) -> None:
        await store.create_context_set(record, replace=False)
        full = await store.get_context_set("over", with_documents=True)
        assert full.embeddings.tobytes() == record.embeddings.tobytes()
        assert full.documents == record.documents
        assert full.context_id == record.context_id
        lean = await store.get_context_set("over")
        assert lean.embeddings.tobytes() == record.embeddings.tobytes() and lean.documents == ()
        usage = await store.usage("")
        assert usage == StoreUsage(1, compact_size(record))
        naive = record.embeddings.nbytes + len(json.dumps(list(record.documents)).encode())
        assert usage.stored_bytes * 10 < naive

    run(with_store(store_url, body))


def test_usage_counts_every_retained_revision_per_namespace(store_url: str) -> None:
    async def body(store: Store) -> None:
        acme = TenantStore(store, "acme")
        await acme.create_context_set(oversampled("a", 1.0), replace=False)
        await acme.create_context_set(oversampled("a", 2.0), replace=True)
        await acme.create_context_set(oversampled("b", 3.0), replace=False)
        await store.create_context_set(oversampled("bare", 4.0), replace=False)
        expected = sum(
            compact_size(oversampled(n, v)) for n, v in (("a", 1.0), ("a", 2.0), ("b", 3.0))
        )
        assert await store.usage("acme") == StoreUsage(2, expected)
        assert await store.usage("") == StoreUsage(1, compact_size(oversampled("bare", 4.0)))
        assert await store.usage("other") == StoreUsage(0, 0)
        await acme.delete_context_set("a", revision=1)
        assert (await store.usage("acme")).stored_bytes == expected - compact_size(
            oversampled("a", 1.0)
        )

    run(with_store(store_url, body))


# -- quotas ----------------------------------------------------------------------------------


def test_context_set_quota_refuses_a_new_name_but_not_a_replace(store_url: str) -> None:
    quota = StoreQuota(max_context_sets=2)

    async def body(store: Store) -> None:
        acme = TenantStore(store, "acme")
        for name in ("a", "b"):
            await acme.create_context_set(make_set(name), replace=False, quota=quota)
        with pytest.raises(QuotaExceededError) as refused:
            await acme.create_context_set(make_set("c"), replace=False, quota=quota)
        assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.quota == "context_sets"
        assert "has 2 context sets and its limit is 2; delete a context set" in str(refused.value)
        assert "retrying will not help" in refused.value.message
        assert refused.value.retry_after is None
        assert [s.name for s in await acme.list_context_sets(after=None, limit=5)] == ["a", "b"]
        replaced = await acme.create_context_set(make_set("a", 2.0), replace=True, quota=quota)
        assert replaced.revision == 2
        await TenantStore(store, "beta").create_context_set(
            make_set("c"), replace=False, quota=quota
        )
        await acme.delete_context_set("b")
        await acme.create_context_set(make_set("c"), replace=False, quota=quota)

    run(with_store(store_url, body))


def test_byte_quota_counts_revisions_and_pruning_frees_them(store_url: str) -> None:
    size = compact_size(oversampled("a", 1.0))
    quota = StoreQuota(max_stored_bytes=3 * size)

    async def body(store: Store) -> None:
        acme = TenantStore(store, "acme")
        for value in (1.0, 2.0, 3.0):
            await acme.create_context_set(oversampled("a", value), replace=True, quota=quota)
        with pytest.raises(QuotaExceededError) as refused:
            await acme.create_context_set(oversampled("b", 4.0), replace=False, quota=quota)
        error = refused.value
        assert (error.quota, error.usage, error.needed, error.limit) == (
            "stored_bytes",
            3 * size,
            size,
            3 * size,
        )
        assert f"use {3 * size} bytes and the new revision needs {size} more" in error.message
        assert 'delete context sets or old revisions ("name@N")' in error.message
        with pytest.raises(QuotaExceededError):  # keeping 5 revisions would need a 4th
            await acme.create_context_set(oversampled("a", 4.0), replace=True, quota=quota)
        assert [r.revision for r in (await acme.get_revisions("a")).revisions] == [1, 2, 3]
        # the same replace keeping 3 revisions prunes revision 1: it fits
        kept = await acme.create_context_set(
            oversampled("a", 4.0), replace=True, keep=3, quota=quota
        )
        assert kept.revision == 4
        assert (await store.usage("acme")).stored_bytes == 3 * size
        await acme.delete_context_set("a", revision=2)  # frees one revision's bytes
        await acme.create_context_set(oversampled("b", 5.0), replace=False, quota=quota)

    run(with_store(store_url, body))


def test_concurrent_creates_never_pass_the_set_quota(store_url: str) -> None:
    quota = StoreQuota(max_context_sets=3)

    async def body() -> None:
        stores = [await open_store(store_url) for _ in range(4)]
        try:
            outcomes = await asyncio.gather(
                *(
                    TenantStore(s, "acme").create_context_set(
                        make_set(f"s{i}"), replace=False, quota=quota
                    )
                    for i, s in enumerate(stores * 2)
                ),
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, QuotaExceededError)]
            assert len(refused) == 5 and len(outcomes) - len(refused) == 3, outcomes
            assert (await stores[0].usage("acme")).context_sets == 3
        finally:
            for s in stores:
                await s.close()

    run(body())


# -- idempotent creates ---------------------------------------------------------------------


def keyed(context_set: StoredContextSet, key: str, fingerprint: str) -> StoredContextSet:
    return dataclasses.replace(context_set, idempotency_key=key, request_fingerprint=fingerprint)


def test_a_create_retried_with_its_key_returns_the_first_revision(store_url: str) -> None:
    async def body(store: Store) -> None:
        first = await store.create_context_set(keyed(make_set("a"), "k1", "fp1"), replace=False)
        again = await store.create_context_set(keyed(make_set("a"), "k1", "fp1"), replace=False)
        assert (first.revision, again.revision) == (1, 1)
        assert again.context_id == first.context_id and again.idempotency_key == "k1"
        replaced = await store.create_context_set(
            keyed(make_set("a", 2.0), "k2", "fp2"), replace=True
        )
        retried = await store.create_context_set(
            keyed(make_set("a", 2.0), "k2", "fp2"), replace=True
        )
        assert (replaced.revision, retried.revision) == (2, 2)
        history = await store.get_revisions("a")
        assert [r.revision for r in history.revisions] == [1, 2]
        assert [r.idempotency_key for r in history.revisions] == ["k1", "k2"]
        with pytest.raises(FailedPreconditionError, match='key "k1" was already used for a'):
            await store.create_context_set(keyed(make_set("a", 3.0), "k1", "other"), replace=True)
        other = await store.create_context_set(keyed(make_set("b"), "k1", "fp1"), replace=False)
        assert other.revision == 1  # keys are per context set

    run(with_store(store_url, body))


def test_concurrent_tries_of_one_keyed_create_make_one_revision(store_url: str) -> None:
    async def body() -> None:
        stores = [await open_store(store_url) for _ in range(4)]
        try:
            await stores[0].create_context_set(make_set("a"), replace=False)
            created = await asyncio.gather(
                *(
                    s.create_context_set(keyed(make_set("a", 2.0), "k", "fp"), replace=True)
                    for s in stores * 2
                )
            )
            assert {c.revision for c in created} == {2}
            history = await stores[1].get_revisions("a")
            assert [r.revision for r in history.revisions] == [1, 2]
        finally:
            for s in stores:
                await s.close()

    run(body())


# -- upgrades --------------------------------------------------------------------------------


def _v2_revisions(path: Path) -> dict[tuple[str, int], tuple[bytes, list[str], str]]:
    """(name, revision) → (embeddings blob, documents, context id) as the version-2 file
    holds them."""
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        rows = connection.execute(
            "SELECT name, revision, embeddings, documents, context_id FROM context_set_revisions"
        ).fetchall()
    return {(n, r): (blob, json.loads(docs), cid) for n, r, blob, docs, cid in rows}


def test_sqlite_store_of_schema_version_2_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    shutil.copy(V2_STORE, path)
    old = _v2_revisions(path)
    legacy_bytes = sum(len(blob) + len(json.dumps(docs).encode()) for blob, docs, _ in old.values())
    assert len(old) == 6

    async def body(store: Store) -> None:
        for (name, revision), (blob, documents, cid) in old.items():
            stored = await store.get_context_set(name, revision=revision, with_documents=True)
            assert stored.embeddings.astype("<f4").tobytes() == blob
            assert list(stored.documents) == documents
            assert stored.context_id == cid == context_id(stored.embeddings)
        history = await store.get_revisions("over")
        assert (history.active_revision, history.latest_revision) == (3, 4)
        assert await store.list_prompts() == {"custom-doc": "passage: ", "acme/q": "query: "}
        usage = (await store.usage("")).stored_bytes + (await store.usage("acme")).stored_bytes
        assert usage < 0.6 * legacy_bytes
        nxt = await store.create_context_set(make_set("over"), replace=True, activate=False)
        assert nxt.revision == 5 and (await store.get_summary("over")).revision == 3

    run(with_store(f"sqlite://{path}", body))
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_failed_upgrade_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    shutil.copy(V2_STORE, path)
    with sqlite3.connect(path) as connection:  # one revision's blob loses a byte
        connection.execute(
            "UPDATE context_set_revisions SET embeddings = substr(embeddings, 2) "
            "WHERE name = 'over' AND revision = 4"
        )
    before = _v2_revisions(path)
    with pytest.raises(StoreUnavailableError, match='"over" revision 4 is corrupt'):
        run(with_store(f"sqlite://{path}", lambda s: s.ping()))
    assert _v2_revisions(path) == before  # still version 2, every row unchanged


def test_redis_revisions_of_the_layout_before_version_3_are_compacted_in_place(
    redis_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    active, inactive = oversampled("x", 2.0), oversampled("x", 1.0, rows=32, distinct=2)
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:  # revision 1 inactive, 2 active, as schema version 2 wrote them (N rows, N documents)
        for key, record, revision in (
            (f"{prefix}context_set:x", active, 2),
            (f"{prefix}context_revision:x@1", inactive, 1),
        ):
            raw.hset(
                key,
                mapping={
                    "meta": encode_metadata(record),
                    "revision": revision,
                    "embeddings": record.embeddings.astype("<f4").tobytes(),
                    "documents": json.dumps(list(record.documents)),
                },
            )
        raw.zadd(f"{prefix}context_revisions:x", {"1": 1})
        raw.zadd(f"{prefix}context_sets", {"x": 0})
        legacy = sum(
            raw.hstrlen(key, field)
            for key in (f"{prefix}context_set:x", f"{prefix}context_revision:x@1")
            for field in ("embeddings", "documents")
        )
    finally:
        raw.close()

    async def body(store: Store) -> None:
        for revision, record in ((2, active), (1, inactive)):
            stored = await store.get_context_set("x", revision=revision, with_documents=True)
            assert stored.embeddings.tobytes() == record.embeddings.tobytes()
            assert stored.documents == record.documents
        usage = await store.usage("")
        assert usage == StoreUsage(1, compact_size(active) + compact_size(inactive))
        assert usage.stored_bytes * 10 < legacy

    run(with_store(f"{redis_server.url}?prefix={prefix}", body))
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        assert raw.hexists(f"{prefix}context_set:x", "sample")
        assert raw.hexists(f"{prefix}context_revision:x@1", "sample")
    finally:
        raw.close()
