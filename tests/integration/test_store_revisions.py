"""Context-set revisions in every store backend: immutable, pinned, activated, pruned,
and the upgrade of stores written before revisions existed."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import redis
from cde_server.domain.tenancy import TenantStore
from cde_server.errors import FailedPreconditionError, NotFoundError
from cde_server.stores import Store, open_store
from cde_server.stores.records import encode_metadata
from support.paths import REPO_ROOT
from support.store_fixtures import RedisServer, unique_prefix
from support.store_records import make_set, run, with_store

V1_STORE = REPO_ROOT / "tests" / "data" / "store_v1.db"


def test_replace_keeps_old_revisions_readable_by_number(store_url: str) -> None:
    async def body(store: Store) -> None:
        for value in (1.0, 2.0, 3.0):
            await store.create_context_set(make_set("a", value), replace=True)
        assert (await store.get_summary("a")).revision == 3
        for revision, value in ((1, 1.0), (2, 2.0), (3, 3.0)):
            pinned = await store.get_context_set("a", revision=revision, with_documents=True)
            assert pinned.revision == revision
            np.testing.assert_array_equal(pinned.embeddings, make_set("a", value).embeddings)
            assert pinned.documents == make_set("a", value).documents
            assert (await store.get_summary("a", revision=revision)).revision == revision

    run(with_store(store_url, body))


def test_inactive_create_does_not_change_what_the_name_serves(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a", 1.0), replace=False)
        new = await store.create_context_set(make_set("a", 2.0), replace=True, activate=False)
        assert new.revision == 2
        served = await store.get_context_set("a")
        assert served.revision == 1
        np.testing.assert_array_equal(served.embeddings, make_set("a", 1.0).embeddings)
        listed = await store.list_context_sets(after=None, limit=5)
        assert [(s.name, s.revision) for s in listed] == [("a", 1)]
        history = await store.get_revisions("a")
        assert history.active_revision == 1 and history.latest_revision == 2
        assert [r.revision for r in history.revisions] == [1, 2]
        assert history.revisions[1].context_id == make_set("a", 2.0).context_id
        assert history.revisions[1].sampling == "subsampled"
        assert history.revisions[1].source_document_count == 5

    run(with_store(store_url, body))


def test_first_revision_is_active_even_without_activate(store_url: str) -> None:
    async def body(store: Store) -> None:
        created = await store.create_context_set(make_set("a"), replace=False, activate=False)
        assert created.revision == 1
        assert (await store.get_summary("a")).revision == 1

    run(with_store(store_url, body))


def test_activate_switches_back_and_forth_exactly(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a", 1.0), replace=False)
        await store.create_context_set(make_set("a", 2.0), replace=True)
        assert (await store.activate_context_set("a", 1)).revision == 1
        served = await store.get_context_set("a", with_documents=True)
        assert served.revision == 1 and served.documents == make_set("a", 1.0).documents
        np.testing.assert_array_equal(served.embeddings, make_set("a", 1.0).embeddings)
        assert (await store.activate_context_set("a", 1)).revision == 1  # idempotent
        await store.activate_context_set("a", 2)
        np.testing.assert_array_equal(
            (await store.get_context_set("a")).embeddings, make_set("a", 2.0).embeddings
        )
        with pytest.raises(NotFoundError, match='"a" has no revision 7; the latest is 2'):
            await store.activate_context_set("a", 7)
        with pytest.raises(NotFoundError, match='context set "b" not found'):
            await store.activate_context_set("b", 1)

    run(with_store(store_url, body))


def test_delete_one_revision_but_never_the_active_one_alone(store_url: str) -> None:
    async def body(store: Store) -> None:
        for value in (1.0, 2.0, 3.0):
            await store.create_context_set(make_set("a", value), replace=True)
        with pytest.raises(FailedPreconditionError, match="activate another first"):
            await store.delete_context_set("a", revision=3)
        await store.delete_context_set("a", revision=2)
        with pytest.raises(NotFoundError, match="revision 2 was pruned or deleted"):
            await store.get_context_set("a", revision=2)
        with pytest.raises(NotFoundError, match="revision 2 was pruned or deleted"):
            await store.delete_context_set("a", revision=2)
        history = await store.get_revisions("a")
        assert [r.revision for r in history.revisions] == [1, 3]
        await store.delete_context_set("a")
        with pytest.raises(NotFoundError, match='context set "a" not found'):
            await store.get_summary("a", revision=1)
        with pytest.raises(NotFoundError, match='context set "a" not found'):
            await store.get_revisions("a")
        again = await store.create_context_set(make_set("a"), replace=False)
        assert again.revision == 4

    run(with_store(store_url, body))


def test_pruning_keeps_the_latest_and_the_active_and_says_so(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a", 1.0), replace=False, keep=3)
        for value in (2.0, 3.0, 4.0):
            await store.create_context_set(make_set("a", value), replace=True, keep=3)
        assert [r.revision for r in (await store.get_revisions("a")).revisions] == [2, 3, 4]
        await store.activate_context_set("a", 2)
        for value in (5.0, 6.0, 7.0):
            await store.create_context_set(
                make_set("a", value), replace=True, activate=False, keep=3
            )
        history = await store.get_revisions("a")
        assert history.active_revision == 2
        assert [r.revision for r in history.revisions] == [2, 5, 6, 7]
        message = "revision 3 was pruned or deleted; the kept revisions are 2, 5, 6, 7 (active: 2)"
        with pytest.raises(NotFoundError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await store.get_summary("a", revision=3)
        with pytest.raises(NotFoundError, match="has no revision 8; the latest is 7"):
            await store.get_context_set("a", revision=8)

    run(with_store(store_url, body))


def test_concurrent_replaces_get_distinct_numbers(store_url: str) -> None:
    async def body() -> None:
        stores = [await open_store(store_url) for _ in range(4)]
        try:
            await stores[0].create_context_set(make_set("a"), replace=False)
            created = await asyncio.gather(
                *(
                    store.create_context_set(make_set("a", float(i)), replace=True, keep=10)
                    for i, store in enumerate(stores * 2)
                )
            )
            numbers = sorted(c.revision for c in created)
            assert numbers == list(range(2, 10))
            history = await stores[1].get_revisions("a")
            assert history.active_revision in numbers
            await asyncio.gather(
                *(s.activate_context_set("a", n) for s, n in zip(stores, (2, 3, 4, 5), strict=True))
            )
            served = await stores[2].get_context_set("a")
            assert served.revision in (2, 3, 4, 5)
            assert (await stores[3].get_revisions("a")).active_revision == served.revision
        finally:
            for store in stores:
                await store.close()

    run(body())


def test_tenant_sees_revision_errors_under_its_bare_names(store_url: str) -> None:
    async def body(store: Store) -> None:
        tenant = TenantStore(store, "acme")
        await tenant.create_context_set(make_set("a", 1.0), replace=False)
        await tenant.create_context_set(make_set("a", 2.0), replace=True)
        with pytest.raises(FailedPreconditionError, match='context set "a"'):
            await tenant.delete_context_set("a", revision=2)
        with pytest.raises(NotFoundError, match='context set "a" has no revision 3'):
            await tenant.get_summary("a", revision=3)
        history = await tenant.get_revisions("a")
        assert {r.name for r in history.revisions} == {"a"}
        assert (await tenant.activate_context_set("a", 1)).name == "a"
        with pytest.raises(NotFoundError):
            await TenantStore(store, "other").get_summary("a", revision=1)

    run(with_store(store_url, body))


# -- upgrade of stores written before revisions ----------------------------------------------


def _v1_rows(path: Path) -> dict[str, tuple[int, bytes, str, str]]:
    """name → (revision, embeddings blob, documents, prompt) as the version-1 file holds them."""
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
        rows = connection.execute(
            "SELECT name, revision, embeddings, documents, prompt FROM context_sets"
        ).fetchall()
    return {
        name: (revision, blob, documents, prompt)
        for name, revision, blob, documents, prompt in rows
    }


def test_sqlite_store_of_schema_version_1_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    shutil.copy(V1_STORE, path)
    old = _v1_rows(path)
    assert set(old) == {"plain", "replaced", "acme/docs"} and old["replaced"][0] == 3

    async def body(store: Store) -> None:
        for name, (revision, blob, documents, prompt) in old.items():
            stored = await store.get_context_set(name, with_documents=True)
            assert stored.revision == revision and stored.prompt == prompt
            assert stored.embeddings.astype("<f4").tobytes() == blob
            assert list(stored.documents) == json.loads(documents)
            history = await store.get_revisions(name)
            assert history.active_revision == revision
            assert [r.revision for r in history.revisions] == [revision]
        assert await store.list_prompts() == {"custom-doc": "passage: ", "acme/q": "query: "}
        tenant = TenantStore(store, "acme")
        assert (await tenant.get_summary("docs", revision=1)).name == "docs"
        nxt = await store.create_context_set(make_set("replaced"), replace=True, activate=False)
        assert nxt.revision == 4
        assert (await store.get_summary("replaced")).revision == 3

    run(with_store(f"sqlite://{path}", body))
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "legacy_revisions" not in tables
    run(with_store(f"sqlite://{path}", lambda s: s.get_summary("plain")))  # reopens as is


def test_redis_data_of_the_layout_before_revisions_is_read_as_is(
    redis_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    old = make_set("old", 4.0)
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:  # the keys exactly as the release before revisions wrote them
        raw.hset(
            f"{prefix}context_set:old",
            mapping={
                "meta": encode_metadata(old),
                "revision": 6,
                "embeddings": old.embeddings.astype("<f4").tobytes(),
                "documents": '["doc 4.0 #0", "doc 4.0 #1", "doc 4.0 #2", "doc 4.0 #3"]',
            },
        )
        raw.zadd(f"{prefix}context_sets", {"old": 0})
        raw.hset(f"{prefix}prompts", "custom-doc", "passage: ")
    finally:
        raw.close()

    async def body(store: Store) -> None:
        stored = await store.get_context_set("old", with_documents=True)
        assert stored.revision == 6 and stored.documents == old.documents
        assert stored.embeddings.tobytes() == old.embeddings.tobytes()
        assert (await store.get_summary("old", revision=6)).context_id == old.context_id
        history = await store.get_revisions("old")
        assert (history.active_revision, history.latest_revision) == (6, 6)
        assert await store.get_prompt("custom-doc") == "passage: "
        new = await store.create_context_set(make_set("old", 5.0), replace=True, activate=False)
        assert new.revision == 7
        assert (await store.get_summary("old")).revision == 6
        await store.activate_context_set("old", 7)
        await store.activate_context_set("old", 6)
        again = await store.get_context_set("old", with_documents=True)
        assert again.embeddings.tobytes() == old.embeddings.tobytes()
        assert again.documents == old.documents

    run(with_store(f"{redis_server.url}?prefix={prefix}", body))
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:  # opening the store compacted the old hash in place (now revision 6, active)
        assert raw.hexists(f"{prefix}context_set:old", "sample")
    finally:
        raw.close()
