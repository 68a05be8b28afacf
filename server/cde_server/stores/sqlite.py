"""SQLite store: one database file, WAL journal, calls on one worker thread.

A single connection on a dedicated thread serializes this process's calls (the Embed path's
summary read excepted, see `get_summary`); `BEGIN IMMEDIATE`
serializes writers across processes sharing the file, so check-then-insert is atomic and
concurrent creates of one name leave exactly one winner. Embeddings are float32 blobs,
documents a JSON array; metadata columns come first so summaries never read the blobs.

Schema version 3: `context_sets` holds each name's active revision, `context_set_revisions`
the immutable revisions (name, revision) in compact form (see `records.Compacted`: distinct
rows and documents, the sample's indices, their size in `stored_bytes`) with the key and
request fingerprint of the create that made each, `context_set_revision_counters` the
highest number each name ever had (kept after a delete, so numbers are never reused).
Older files are migrated in place, in one transaction, when opened: version 1 (one row per
name in `context_sets`, the release before revisions) and version 2 (revisions with N
documents and N rows each) both go straight to version 3, every document and embedding kept.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cde_server.errors import (
    AlreadyExistsError,
    InternalError,
    NotFoundError,
    StoreUnavailableError,
)
from cde_server.private_files import ensure_private_dir, ensure_private_file, warn_if_shared
from cde_server.stores import records
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
    kept_revisions,
    missing_revision_error,
    namespace_of,
)

T = TypeVar("T")

SCHEMA_VERSION = 3
MEMORY = ":memory:"
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS context_sets (
    name TEXT PRIMARY KEY NOT NULL,
    active_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS context_set_revisions (
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    prompt TEXT NOT NULL,
    source_document_count INTEGER NOT NULL,
    sampling TEXT NOT NULL,
    context_id TEXT NOT NULL,
    context_size INTEGER NOT NULL,
    embedding_dim INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL DEFAULT '',
    request_fingerprint TEXT NOT NULL DEFAULT '',
    stored_bytes INTEGER NOT NULL,
    embeddings BLOB NOT NULL,
    documents TEXT NOT NULL,
    sample BLOB NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE IF NOT EXISTS context_set_revision_counters (
    name TEXT PRIMARY KEY NOT NULL,
    last_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    name TEXT PRIMARY KEY NOT NULL,
    text TEXT NOT NULL
);
"""

# The metadata columns versions 1 and 2 share with version 3 (in this order).
_LEGACY_COLUMNS = (
    "name, revision, created_at, model_fingerprint, prompt, source_document_count, "
    "sampling, context_id, context_size, embedding_dim"
)
# Version 1 -> 3 (before the rows are copied): each old row becomes revision N (active) of
# its name; prompts are untouched.
_MIGRATE_V1 = """
ALTER TABLE context_sets RENAME TO legacy_revisions;
{schema};
INSERT INTO context_sets (name, active_revision) SELECT name, revision FROM legacy_revisions;
INSERT INTO context_set_revision_counters (name, last_revision)
SELECT name, revision FROM legacy_revisions
""".format(schema=_SCHEMA.strip().rstrip(";"))
# Version 2 -> 3 (before the rows are copied): only the revisions table changes.
_MIGRATE_V2 = """
ALTER TABLE context_set_revisions RENAME TO legacy_revisions;
{schema}
""".format(schema=_SCHEMA.strip().rstrip(";"))
_MIGRATIONS = {1: _MIGRATE_V1, 2: _MIGRATE_V2}

_REVISION_COLUMNS = f"{_LEGACY_COLUMNS}, idempotency_key, request_fingerprint"
_PAYLOAD_COLUMNS = ", r.embeddings, r.sample"
_SUMMARY_COLUMNS = ", ".join(f"r.{column.strip()}" for column in _REVISION_COLUMNS.split(","))
_ACTIVE_JOIN = (
    "context_sets s JOIN context_set_revisions r "
    "ON r.name = s.name AND r.revision = s.active_revision"
)


def _revision_query(
    name: str, revision: int | None, extra_columns: str = ""
) -> tuple[str, tuple[Any, ...]]:
    """SQL and parameters selecting the summary columns (and `extra_columns`) of the active
    revision of `name`, or of `revision`."""
    if revision is None:
        return (
            f"SELECT {_SUMMARY_COLUMNS}{extra_columns} FROM {_ACTIVE_JOIN} WHERE s.name = ?",
            (name,),
        )
    return (
        f"SELECT {_SUMMARY_COLUMNS}{extra_columns} FROM context_set_revisions r "
        "WHERE r.name = ? AND r.revision = ?",
        (name, revision),
    )


def _summary_from_row(row: tuple[Any, ...]) -> ContextSetSummary:
    return ContextSetSummary(
        name=row[0],
        revision=int(row[1]),
        created_at=records.parse_time(row[2]),
        model_fingerprint=row[3],
        prompt=row[4],
        source_document_count=int(row[5]),
        sampling=records.parse_sampling(row[6]),
        context_id=row[7],
        context_size=int(row[8]),
        embedding_dim=int(row[9]),
        idempotency_key=row[10],
        request_fingerprint=row[11],
    )


def _insert_revision(
    db: sqlite3.Connection, metadata: tuple[Any, ...], payload: records.Compacted
) -> None:
    """Insert one revision: the `_REVISION_COLUMNS` values, then its payload."""
    db.execute(
        f"INSERT INTO context_set_revisions ({_REVISION_COLUMNS}, stored_bytes, embeddings, "
        "documents, sample) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *metadata,
            payload.stored_bytes,
            payload.embeddings,
            payload.documents,
            payload.sample,
        ),
    )


def _copy_legacy_revisions(db: sqlite3.Connection) -> None:
    """Compact every row of `legacy_revisions` (versions 1, 2) into the version-3 table."""
    rows = db.execute(
        f"SELECT {_LEGACY_COLUMNS}, embeddings, documents FROM legacy_revisions "
        "ORDER BY name, revision"
    )
    for row in rows:
        metadata, (blob, documents) = tuple(row[:10]), row[10:]
        try:
            payload = records.compact_legacy(blob, documents, int(row[8]), int(row[9]))
        except ValueError as exc:  # the caller rolls back: the file stays as it was
            raise StoreUnavailableError(
                f'cannot upgrade the SQLite store: context set "{row[0]}" revision {row[1]} '
                f"is corrupt ({exc}); the file was left unchanged"
            ) from exc
        _insert_revision(db, (*metadata, "", ""), payload)
    db.execute("DROP TABLE legacy_revisions")


def _namespace_clause(namespace: str | None, column: str = "name") -> tuple[str, tuple[str, ...]]:
    """An `AND ...` SQL condition (and its parameters) keeping the names of `namespace`."""
    if namespace is None:
        return "", ()
    if not namespace:
        return f"AND instr({column}, '{NAMESPACE_SEPARATOR}') = 0", ()
    low = namespace + NAMESPACE_SEPARATOR
    high = namespace + chr(ord(NAMESPACE_SEPARATOR) + 1)  # just past every "<namespace>/..."
    return f"AND {column} >= ? AND {column} < ?", (low, high)


class SqliteStore:
    """`Store` over a SQLite file (or `:memory:` for throwaway use)."""

    def __init__(self, path: str) -> None:
        """Prepare the worker thread; call `open()` before use (or use `SqliteStore.connect`)."""
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cde-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # the event loop's, for get_summary
        self._closed = False

    @classmethod
    async def connect(cls, path: str) -> SqliteStore:
        """Open (creating if needed) the database at `path`."""
        store = cls(path)
        try:
            await store._run(store._open)
        except BaseException:
            await store.close()
            raise
        return store

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailableError(f"SQLite store {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(function, *args))
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"SQLite store {self.path} failed: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreUnavailableError(f"SQLite store {self.path} is not open")
        return self._connection

    def _open(self) -> None:
        if self.path != MEMORY:
            database = Path(self.path)
            try:  # every tenant's documents are in here: this user only (WAL/SHM follow)
                ensure_private_dir(database.parent)
                ensure_private_file(database)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot create SQLite store {self.path}: {exc}"
                ) from exc
            for path in (database, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                warn_if_shared(path, "the SQLite store file")
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"SQLite store {self.path} has schema version {version}, newer than this "
                    f"server's {SCHEMA_VERSION}; upgrade cde-serve"
                )
            connection.execute("BEGIN IMMEDIATE")
            try:  # re-read under the write lock: another process may have migrated meanwhile
                version = int(connection.execute("PRAGMA user_version").fetchone()[0])
                script = _MIGRATIONS.get(version, _SCHEMA)
                for statement in filter(str.strip, script.split(";")):
                    connection.execute(statement)
                if version in _MIGRATIONS:
                    _copy_legacy_revisions(connection)
                connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        if self.path != MEMORY:  # never waits: a busy file sends the read to the worker
            self._reader = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA query_only=ON")

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
        payload = records.compact(context_set.embeddings, context_set.documents)
        return await self._run(self._create, context_set, payload, replace, activate, keep, quota)

    def _create(
        self,
        context_set: StoredContextSet,
        payload: records.Compacted,
        replace: bool,
        activate: bool,
        keep: int,
        quota: StoreQuota | None,
    ) -> StoredContextSet:
        db = self._db()
        name = context_set.name
        db.execute("BEGIN IMMEDIATE")
        try:
            earlier = self._idempotent_revision(context_set)
            if earlier is not None:
                db.execute("COMMIT")
                return self._get(name, earlier, True)
            row = db.execute(
                "SELECT active_revision FROM context_sets WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and not replace:
                raise AlreadyExistsError(
                    f'context set "{name}" already exists; use replace to rebuild it'
                )
            before = self._usage(namespace_of(name)) if quota is not None else None
            revision = self._last_revision(name) + 1
            metadata = (
                name,
                revision,
                records.format_time(context_set.created_at),
                context_set.model_fingerprint,
                context_set.prompt,
                context_set.source_document_count,
                context_set.sampling,
                context_set.context_id,
                context_set.context_size,
                context_set.embedding_dim,
                context_set.idempotency_key,
                context_set.request_fingerprint,
            )
            _insert_revision(db, metadata, payload)
            db.execute(
                "INSERT INTO context_set_revision_counters (name, last_revision) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET last_revision = excluded.last_revision",
                (name, revision),
            )
            active = revision if row is None or activate else int(row[0])
            db.execute(
                "INSERT INTO context_sets (name, active_revision) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET active_revision = excluded.active_revision",
                (name, active),
            )
            self._prune(name, active, keep)
            if before is not None:
                check_quota(quota, before, self._usage(namespace_of(name)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return context_set.with_revision(revision)

    def _idempotent_revision(self, context_set: StoredContextSet) -> int | None:
        """The retained revision made by an earlier try of this create (None: there is none);
        `FailedPreconditionError` when its key was used for another request."""
        key = context_set.idempotency_key
        if not key:
            return None
        row = (
            self._db()
            .execute(
                "SELECT revision, request_fingerprint FROM context_set_revisions "
                "WHERE name = ? AND idempotency_key = ? ORDER BY revision DESC LIMIT 1",
                (context_set.name, key),
            )
            .fetchone()
        )
        if row is None:
            return None
        if row[1] != context_set.request_fingerprint:
            raise idempotency_mismatch_error(context_set.name, key, int(row[0]))
        return int(row[0])

    async def usage(self, namespace: str) -> StoreUsage:
        """What `namespace` holds; see `Store.usage`."""
        return await self._run(self._usage, namespace)

    def _usage(self, namespace: str) -> StoreUsage:
        db = self._db()
        where, params = _namespace_clause(namespace)
        sets = db.execute(f"SELECT COUNT(*) FROM context_sets WHERE 1 {where}", params)
        stored = db.execute(
            f"SELECT COALESCE(SUM(stored_bytes), 0) FROM context_set_revisions WHERE 1 {where}",
            params,
        )
        return StoreUsage(int(sets.fetchone()[0]), int(stored.fetchone()[0]))

    def _last_revision(self, name: str) -> int:
        row = (
            self._db()
            .execute(
                "SELECT last_revision FROM context_set_revision_counters WHERE name = ?", (name,)
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def _retained(self, name: str) -> list[int]:
        rows = (
            self._db()
            .execute(
                "SELECT revision FROM context_set_revisions WHERE name = ? ORDER BY revision",
                (name,),
            )
            .fetchall()
        )
        return [int(row[0]) for row in rows]

    def _prune(self, name: str, active: int, keep: int) -> None:
        retained = self._retained(name)
        kept = kept_revisions(retained, active, keep)
        for revision in retained:
            if revision not in kept:
                self._db().execute(
                    "DELETE FROM context_set_revisions WHERE name = ? AND revision = ?",
                    (name, revision),
                )

    def _missing(self, name: str, revision: int | None) -> NotFoundError:
        """The NOT_FOUND error for a read that found nothing."""
        row = (
            self._db()
            .execute("SELECT active_revision FROM context_sets WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None or revision is None:
            return NotFoundError(f'context set "{name}" not found')
        return missing_revision_error(
            name, revision, self._last_revision(name), self._retained(name), int(row[0])
        )

    def _select_revision(
        self, name: str, revision: int | None, extra_columns: str = ""
    ) -> tuple[Any, ...]:
        """One row: the summary columns (and `extra_columns`) of the active or given revision."""
        row = self._db().execute(*_revision_query(name, revision, extra_columns)).fetchone()
        if row is None:
            raise self._missing(name, revision)
        return tuple(row)

    async def get_context_set(
        self, name: str, *, revision: int | None = None, with_documents: bool = False
    ) -> StoredContextSet:
        """The active revision (or `revision`) with embeddings (and documents if asked)."""
        return await self._run(self._get, name, revision, with_documents)

    def _get(self, name: str, revision: int | None, with_documents: bool) -> StoredContextSet:
        documents_column = ", r.documents" if with_documents else ", '[]'"
        row = self._select_revision(name, revision, _PAYLOAD_COLUMNS + documents_column)
        try:
            summary = _summary_from_row(row)
            stored = records.Compacted(embeddings=row[12], sample=row[13], documents=row[14])
            embeddings, documents = stored.materialize(
                summary.context_size, summary.embedding_dim, with_documents=with_documents
            )
        except (ValueError, KeyError) as exc:
            raise InternalError(f'stored context set "{name}" is corrupt: {exc}') from exc
        return records.assemble(summary, embeddings, documents)

    async def get_summary(self, name: str, *, revision: int | None = None) -> ContextSetSummary:
        """The metadata of the active revision (or `revision`), one query.

        Every Embed makes this read, so it runs on the event loop: a WAL reader does not wait
        for writers, and the worker-thread hop cost more than the query (loadtest/RESULTS.md,
        "Serving path changes"). Anything but a found row (missing, busy, failing) is read
        again on the worker, which makes the errors.
        """
        if self._reader is not None:  # None once closed: the worker path says so
            try:
                row = self._reader.execute(*_revision_query(name, revision)).fetchone()
            except sqlite3.Error:
                row = None
            if row is not None:
                return _summary_from_row(tuple(row))
        return await self._run(self._get_summary, name, revision)

    def _get_summary(self, name: str, revision: int | None) -> ContextSetSummary:
        return _summary_from_row(self._select_revision(name, revision))

    async def get_revisions(self, name: str) -> RevisionHistory:
        """The retained revisions and the active one."""
        return await self._run(self._get_revisions, name)

    def _get_revisions(self, name: str) -> RevisionHistory:
        db = self._db()
        db.execute("BEGIN")  # one snapshot for the three reads
        try:
            row = db.execute(
                "SELECT active_revision FROM context_sets WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f'context set "{name}" not found')
            rows = db.execute(
                f"SELECT {_REVISION_COLUMNS} FROM context_set_revisions WHERE name = ? "
                "ORDER BY revision",
                (name,),
            ).fetchall()
            latest = self._last_revision(name)
        finally:
            db.execute("COMMIT")
        return RevisionHistory(
            name=name,
            active_revision=int(row[0]),
            latest_revision=latest,
            revisions=tuple(_summary_from_row(r) for r in rows),
        )

    async def activate_context_set(self, name: str, revision: int) -> ContextSetSummary:
        """Make a retained revision active; see `Store.activate_context_set`."""
        return await self._run(self._activate, name, revision)

    def _activate(self, name: str, revision: int) -> ContextSetSummary:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            summary = _summary_from_row(self._select_revision(name, revision))
            db.execute(
                "UPDATE context_sets SET active_revision = ? WHERE name = ?", (revision, name)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return summary

    async def list_context_sets(
        self, *, after: str | None, limit: int, namespace: str | None = None
    ) -> list[ContextSetSummary]:
        """Up to `limit` summaries in name order with names greater than `after`."""
        return await self._run(self._list, after, limit, namespace)

    def _list(
        self, after: str | None, limit: int, namespace: str | None
    ) -> list[ContextSetSummary]:
        where, params = _namespace_clause(namespace, "s.name")
        rows = (
            self._db()
            .execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM {_ACTIVE_JOIN} WHERE s.name > ? {where} "
                "ORDER BY s.name LIMIT ?",
                (after or "", *params, max(limit, 0)),
            )
            .fetchall()
        )
        return [_summary_from_row(row) for row in rows]

    async def delete_context_set(self, name: str, *, revision: int | None = None) -> None:
        """Delete the set or one inactive revision; see `Store.delete_context_set`."""
        await self._run(self._delete_context_set, name, revision)

    def _delete_context_set(self, name: str, revision: int | None) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT active_revision FROM context_sets WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f'context set "{name}" not found')
            if revision is None:
                db.execute("DELETE FROM context_set_revisions WHERE name = ?", (name,))
                db.execute("DELETE FROM context_sets WHERE name = ?", (name,))
            elif revision == int(row[0]):
                raise active_revision_error(name, revision)
            else:
                cursor = db.execute(
                    "DELETE FROM context_set_revisions WHERE name = ? AND revision = ?",
                    (name, revision),
                )
                if cursor.rowcount == 0:
                    raise self._missing(name, revision)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _delete(self, table: str, name: str, kind: str) -> None:
        cursor = self._db().execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise NotFoundError(f'{kind} "{name}" not found')

    # -- prompts --------------------------------------------------------------------------

    async def list_prompts(self, *, namespace: str | None = None) -> dict[str, str]:
        """Custom prompts (of one namespace, if given)."""
        return await self._run(self._list_prompts, namespace)

    def _list_prompts(self, namespace: str | None) -> dict[str, str]:
        where, params = _namespace_clause(namespace)
        rows = (
            self._db()
            .execute(f"SELECT name, text FROM prompts WHERE 1 {where} ORDER BY name", params)
            .fetchall()
        )
        return {name: text for name, text in rows}

    async def get_prompt(self, name: str) -> str:
        """One custom prompt's text; `NotFoundError` if absent."""
        return await self._run(self._get_prompt, name)

    def _get_prompt(self, name: str) -> str:
        row = self._db().execute("SELECT text FROM prompts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f'prompt "{name}" not found')
        return str(row[0])

    async def put_prompt(self, name: str, text: str) -> None:
        """Create or replace a custom prompt."""
        await self._run(self._put_prompt, name, text)

    def _put_prompt(self, name: str, text: str) -> None:
        self._db().execute(
            "INSERT INTO prompts (name, text) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET text = excluded.text",
            (name, text),
        )

    async def delete_prompt(self, name: str) -> None:
        """Delete a custom prompt; `NotFoundError` if absent."""
        await self._run(self._delete, "prompts", name, "prompt")

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the database answers."""
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if self._closed:
            return
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._connection is not None:
            connection = self._connection
            self._connection = None
            await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._closed = True
        self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"
