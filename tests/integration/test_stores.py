"""One behaviour suite for every store backend (SQLite file and a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from cde_server.domain.pagination import list_page
from cde_server.errors import AlreadyExistsError, NotFoundError, StoreUnavailableError
from cde_server.stores import Store, StoredContextSet, open_store, sqlite_path
from cde_server.stores.sqlite import SqliteStore
from cde_server.triton.protocol import context_id
from support.store_fixtures import RedisServer, unique_prefix
from support.store_records import make_set, run, with_store

T = TypeVar("T")


def assert_same_content(actual: StoredContextSet, expected: StoredContextSet) -> None:
    assert actual.summary() == expected.summary()
    assert actual.embeddings.dtype == np.float32
    np.testing.assert_array_equal(actual.embeddings, expected.embeddings)
    assert actual.documents == expected.documents


# -- context sets ---------------------------------------------------------------------------


def test_create_and_read_back_exactly(store_url: str) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((512, 768)).astype(np.float32)
    documents = ("plain", "ünïcødé ✓ 🚀", 'quote " and \\ back', "nul \x00 byte", "")
    original = StoredContextSet(
        name="Big.set_1-x",
        created_at=datetime.now(UTC),
        model_fingerprint="f" * 64,
        prompt="custom",
        source_document_count=5,
        revision=99,  # ignored: the store assigns revisions
        sampling="oversampled",
        context_id=context_id(embeddings),
        embeddings=embeddings,
        documents=documents,
    )

    async def body(store: Store) -> None:
        stored = await store.create_context_set(original, replace=False)
        assert stored.revision == 1
        full = await store.get_context_set("Big.set_1-x", with_documents=True)
        assert_same_content(full, stored)
        assert full.created_at == original.created_at
        assert full.context_size == 512 and full.embedding_dim == 768
        lean = await store.get_context_set("Big.set_1-x")
        assert lean.documents == ()
        np.testing.assert_array_equal(lean.embeddings, embeddings)
        assert await store.get_summary("Big.set_1-x") == stored.summary()

    run(with_store(store_url, body))


def test_duplicate_create_is_refused_and_keeps_the_original(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a", 1.0), replace=False)
        with pytest.raises(AlreadyExistsError, match='"a" already exists'):
            await store.create_context_set(make_set("a", 2.0), replace=False)
        kept = await store.get_context_set("a", with_documents=True)
        assert_same_content(kept, make_set("a", 1.0).with_revision(1))

    run(with_store(store_url, body))


def test_replace_bumps_the_revision_and_swaps_content(store_url: str) -> None:
    async def body(store: Store) -> None:
        first = await store.create_context_set(make_set("a", 1.0), replace=True)
        assert first.revision == 1
        second = await store.create_context_set(
            make_set("a", 2.0, rows=6, fingerprint="fp-b"), replace=True
        )
        assert second.revision == 2
        current = await store.get_context_set("a", with_documents=True)
        assert_same_content(current, second)
        assert current.model_fingerprint == "fp-b" and current.context_size == 6
        third = await store.create_context_set(make_set("a", 3.0), replace=True)
        assert third.revision == 3

    run(with_store(store_url, body))


def test_missing_sets_are_not_found(store_url: str) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(NotFoundError, match='context set "nope" not found'):
            await store.get_context_set("nope")
        with pytest.raises(NotFoundError):
            await store.get_summary("nope")
        with pytest.raises(NotFoundError):
            await store.delete_context_set("nope")

    run(with_store(store_url, body))


def test_delete_removes_everywhere_and_name_can_be_reused(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a"), replace=False)
        await store.create_context_set(make_set("a"), replace=True)
        await store.create_context_set(make_set("b"), replace=False)
        await store.delete_context_set("a")
        with pytest.raises(NotFoundError):
            await store.get_context_set("a")
        with pytest.raises(NotFoundError):
            await store.get_summary("a")
        with pytest.raises(NotFoundError):
            await store.delete_context_set("a")
        names = [s.name for s in await store.list_context_sets(after=None, limit=10)]
        assert names == ["b"]
        again = await store.create_context_set(make_set("a"), replace=False)
        assert again.revision == 3  # numbers are never reused, not even after a delete

    run(with_store(store_url, body))


def test_listing_pages_in_name_order(store_url: str) -> None:
    names = ["m", "A", "b.2", "b-1", "Z9", "a_", "0x", "zz", "b_3"]

    async def body(store: Store) -> None:
        assert await store.list_context_sets(after=None, limit=5) == []
        for name in names:
            await store.create_context_set(make_set(name), replace=False)
        first = await store.list_context_sets(after=None, limit=4)
        assert [s.name for s in first] == sorted(names)[:4]
        assert all(s.revision == 1 and s.context_size == 4 for s in first)
        rest = await store.list_context_sets(after=first[-1].name, limit=100)
        assert [s.name for s in rest] == sorted(names)[4:]
        assert await store.list_context_sets(after="zz", limit=5) == []
        assert [s.name for s in await store.list_context_sets(after="b", limit=2)] == [
            "b-1",
            "b.2",
        ]

        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page, token = await list_page(store, requested_size=2, page_token=token)
            seen += [s.name for s in page]
            pages += 1
            if not token:
                break
        assert seen == sorted(names) and pages == 5

    run(with_store(store_url, body))


def test_concurrent_creates_of_one_name_have_exactly_one_winner(store_url: str) -> None:
    async def body() -> None:
        stores = [await open_store(store_url) for _ in range(3)]  # separate connections
        try:
            attempts = [
                store.create_context_set(make_set("race", float(i)), replace=False)
                for i in range(4)
                for store in stores
            ]
            results = await asyncio.gather(*attempts, return_exceptions=True)
            winners = [r for r in results if isinstance(r, StoredContextSet)]
            losers = [r for r in results if isinstance(r, AlreadyExistsError)]
            assert len(winners) == 1 and len(losers) == len(attempts) - 1, results
            stored = await stores[0].get_context_set("race", with_documents=True)
            assert_same_content(stored, winners[0])
        finally:
            for store in stores:
                await store.close()

    run(body())


def test_readers_never_see_a_half_replaced_set(store_url: str) -> None:
    rounds = 15

    async def body() -> None:
        writer, reader = await open_store(store_url), await open_store(store_url)
        try:
            await writer.create_context_set(make_set("hot", 1.0, rows=64, dim=32), replace=False)

            async def write() -> None:
                for revision in range(2, rounds + 2):
                    # rows vary too, so a mix of old and new data would be detectable
                    replacement = make_set("hot", float(revision), rows=60 + revision, dim=32)
                    stored = await writer.create_context_set(replacement, replace=True)
                    assert stored.revision == revision
                    await asyncio.sleep(0)

            async def read() -> int:
                checked = 0
                while True:
                    current = await reader.get_context_set("hot", with_documents=True)
                    value = float(current.revision)
                    expected_rows = 64 if current.revision == 1 else 60 + current.revision
                    assert current.context_size == expected_rows == len(current.documents)
                    assert current.embeddings[1, 0] == value
                    assert current.documents[0] == f"doc {value} #0"
                    assert current.context_id == context_id(current.embeddings)
                    checked += 1
                    if current.revision == rounds + 1:
                        return checked

            _, checked = await asyncio.gather(write(), read())
            assert checked >= 1
        finally:
            await writer.close()
            await reader.close()

    run(body())


# -- prompts -------------------------------------------------------------------------------


def test_listing_by_namespace(store_url: str) -> None:
    """Tenant namespaces ("t/name"): one namespace, the bare one (""), or every name."""
    names = ["a", "t/b", "t/c", "t.x/d", "t-/e", "u/f", "z", "s/g"]

    async def body(store: Store) -> None:
        for name in names:
            await store.create_context_set(make_set(name), replace=False)
            await store.put_prompt(name, f"{name}: ")

        async def listed(
            namespace: str | None, after: str | None = None, limit: int = 50
        ) -> list[str]:
            found = await store.list_context_sets(after=after, limit=limit, namespace=namespace)
            return [s.name for s in found]

        assert await listed(None) == sorted(names)
        assert await listed("") == ["a", "z"]
        assert await listed("t") == ["t/b", "t/c"]
        assert await listed("t", after="t/b") == ["t/c"]
        assert await listed("t", after="a", limit=1) == ["t/b"]
        assert await listed("t", after="t/c") == []
        assert await listed("", after="a", limit=1) == ["z"]
        assert await listed("nobody") == []
        assert list(await store.list_prompts(namespace="t")) == ["t/b", "t/c"]
        assert list(await store.list_prompts(namespace="")) == ["a", "z"]
        assert len(await store.list_prompts()) == len(names)

    run(with_store(store_url, body))


def test_prompt_crud(store_url: str) -> None:
    async def body(store: Store) -> None:
        assert await store.list_prompts() == {}
        await store.put_prompt("zeta", "z: ")
        await store.put_prompt("alpha", "ä: ✓ ")
        assert await store.get_prompt("alpha") == "ä: ✓ "
        await store.put_prompt("zeta", "changed: ")
        assert await store.list_prompts() == {"alpha": "ä: ✓ ", "zeta": "changed: "}
        assert list(await store.list_prompts()) == ["alpha", "zeta"]
        await store.delete_prompt("zeta")
        with pytest.raises(NotFoundError, match='prompt "zeta" not found'):
            await store.get_prompt("zeta")
        with pytest.raises(NotFoundError):
            await store.delete_prompt("zeta")
        assert await store.list_prompts() == {"alpha": "ä: ✓ "}
        await store.put_prompt("empty", "")
        assert await store.get_prompt("empty") == ""

    run(with_store(store_url, body))


# -- persistence and outages ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_data_survives_reopening_and_server_restart(
    backend: str, tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> None:
    restart: Callable[[], None] = lambda: None  # noqa: E731
    if backend == "sqlite":
        url = f"sqlite://{tmp_path / 'nested' / 'dir' / 'store.db'}"
    else:
        server = redis_server_factory()
        url = server.url
        restart = server.restart

    async def write(store: Store) -> None:
        await store.create_context_set(make_set("kept", 1.0), replace=False)
        await store.create_context_set(make_set("kept", 2.0), replace=True)
        await store.create_context_set(make_set("gone"), replace=False)
        await store.delete_context_set("gone")
        await store.put_prompt("mine", "mine: ")

    async def check(store: Store) -> None:
        kept = await store.get_context_set("kept", with_documents=True)
        assert_same_content(kept, make_set("kept", 2.0).with_revision(2))
        assert [s.name for s in await store.list_context_sets(after=None, limit=10)] == ["kept"]
        assert await store.list_prompts() == {"mine": "mine: "}

    run(with_store(url, write))
    restart()
    run(with_store(url, check))


def test_redis_outage_fails_fast_and_recovers(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    server = redis_server_factory()
    url = f"{server.url}?socket_timeout=0.5&socket_connect_timeout=0.5"

    async def expect_unavailable(store: Store, limit_s: float, *, first: int = 99) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            store.ping,
            lambda: store.get_context_set("a"),
            lambda: store.get_summary("a"),
            lambda: store.create_context_set(make_set("b"), replace=False),
            lambda: store.list_context_sets(after=None, limit=5),
            lambda: store.delete_context_set("b"),
            store.list_prompts,
            lambda: store.put_prompt("p", "p"),
            lambda: store.delete_prompt("p"),
        ]
        for call in calls[:first]:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"Redis store redis://127\.0\.0\.1"):
                await call()
            assert time.monotonic() - started < limit_s

    async def body(store: Store) -> None:
        await store.create_context_set(make_set("a"), replace=False)
        server.freeze()  # hung server: connections open, no answers
        try:
            await expect_unavailable(store, limit_s=1.5, first=4)
        finally:
            server.thaw()
        await store.ping()
        server.stop()  # refused connections
        await expect_unavailable(store, limit_s=1.0)
        server.start()
        await store.ping()  # the same store recovers by itself
        assert (await store.get_summary("a")).revision == 1
        server.restart()  # pooled connections break: the first call after must still work
        assert (await store.get_summary("a")).revision == 1

    run(with_store(url, body))


def test_unreachable_redis_fails_at_first_use_not_at_open() -> None:
    async def body() -> None:
        store = await open_store(f"redis://127.0.0.1:1/0?prefix={unique_prefix()}")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.ping()
            assert time.monotonic() - started < 2.0
        finally:
            await store.close()

    run(body())


def test_unusable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    async def body() -> None:
        with pytest.raises(StoreUnavailableError, match="SQLite store"):
            await open_store(f"sqlite://{blocker / 'store.db'}")
        not_a_db = tmp_path / "garbage.db"
        not_a_db.write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreUnavailableError, match="SQLite store"):
            await open_store(f"sqlite://{not_a_db}")

    run(body())


def test_sqlite_summary_read_falls_back_to_the_worker(tmp_path: Path) -> None:
    """The Embed path's summary read runs on the event loop; when that read fails (here: its
    connection is gone) the worker reads instead, and a missing set is NOT_FOUND either way."""

    async def body() -> None:
        store = await open_store(f"sqlite://{tmp_path / 's.db'}")
        try:
            assert isinstance(store, SqliteStore)
            stored = await store.create_context_set(make_set("a", 1.0), replace=False)
            assert await store.get_summary("a") == stored.summary()  # on the loop
            assert store._reader is not None
            store._reader.close()
            assert await store.get_summary("a") == stored.summary()  # on the worker
            with pytest.raises(NotFoundError, match='"b" not found'):
                await store.get_summary("b")
        finally:
            await store.close()

    run(body())


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(f"sqlite://{tmp_path / 's.db'}")
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreUnavailableError, match="closed"):
            await store.list_prompts()

    run(body())


def test_store_urls() -> None:
    assert sqlite_path("sqlite:///abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite://rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    assert sqlite_path("/plain/path.db") == "/plain/path.db"
    with pytest.raises(StoreUnavailableError):
        sqlite_path("sqlite://")

    async def body() -> None:
        with pytest.raises(StoreUnavailableError, match="unsupported store URL"):
            await open_store("postgres://localhost/db")
        memory = await open_store("sqlite://:memory:")
        try:
            await memory.put_prompt("p", "p: ")
            assert await memory.list_prompts() == {"p": "p: "}
        finally:
            await memory.close()

    run(body())


def test_redis_keys_are_namespaced_by_prefix(redis_server: RedisServer) -> None:
    first = f"{redis_server.url}?prefix={unique_prefix()}"
    second = f"{redis_server.url}?prefix={unique_prefix()}"

    async def body() -> None:
        await with_store(first, lambda s: s.create_context_set(make_set("a"), replace=False))
        await with_store(first, lambda s: s.put_prompt("p", "p"))
        assert await with_store(second, lambda s: s.list_context_sets(after=None, limit=5)) == []
        assert await with_store(second, lambda s: s.list_prompts()) == {}

    run(body())


def test_created_at_round_trips_in_utc(store_url: str) -> None:
    local = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5)))
    record = make_set("t")
    record = StoredContextSet(**{**record.__dict__, "created_at": local})

    async def body(store: Store) -> None:
        await store.create_context_set(record, replace=False)
        read = await store.get_summary("t")
        assert read.created_at == local and read.created_at.utcoffset() == timedelta(0)

    run(with_store(store_url, body))


def test_redis_writes_are_idempotent_under_client_retries(redis_server: RedisServer) -> None:
    """A write retried after a lost reply returns the first run's result (white box)."""
    from cde_server.stores.redis import RedisStore

    async def body() -> None:
        store = RedisStore.from_url(f"{redis_server.url}?prefix={unique_prefix()}")
        fresh_op_key = store._op_key

        def retried(write: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
            async def twice() -> T:
                op_key = fresh_op_key()  # both runs share one operation id, like a retry
                store._op_key = lambda: op_key  # type: ignore[method-assign]
                try:
                    await write()
                    return await write()
                finally:
                    store._op_key = fresh_op_key  # type: ignore[method-assign]

            return twice

        try:
            again = await retried(lambda: store.create_context_set(make_set("a"), replace=False))()
            assert again.revision == 1
            again = await retried(lambda: store.create_context_set(make_set("a"), replace=True))()
            assert again.revision == 2
            await retried(lambda: store.delete_context_set("a"))()  # no NotFoundError
            await store.put_prompt("p", "p: ")
            await retried(lambda: store.delete_prompt("p"))()
            with pytest.raises(NotFoundError):  # a new operation sees the truth
                await store.delete_context_set("a")
            with pytest.raises(NotFoundError):
                await store.delete_prompt("p")
        finally:
            await store.close()

    run(body())
