"""Locust users that load a cde-serve gateway through `cde_client`.

Every client call is reported to locust's request event (request_type "grpc", name = the RPC
and scenario, response time in ms, response length in bytes of embeddings, exception), so the
web UI, CSV and HTML reports show per-scenario latency and failures.

Scenarios (user classes, spawned in proportion to their weights):
- `QueryUser` (the hot path): short queries against the shared context set;
- `DocumentUser`: documents of 200-500 tokens against the shared context set;
- `BulkStreamUser`: bulk `EmbedStream` jobs of several document batches;
- `ContextSetUser` (occasional): creates a uniquely named context set, then deletes it.

Settings (environment): CDE_ADDRESS (else locust's --host, else localhost:50051), CDE_API_KEY
(read by the client), CDE_LOADTEST_CONTEXT (shared set, created at test start if missing;
default "loadtest"), CDE_LOADTEST_QUERY_TOKENS ("4-12"), CDE_LOADTEST_DOCUMENT_TOKENS
("200-500"), CDE_LOADTEST_QUERIES_PER_CALL (1), CDE_LOADTEST_DOCUMENTS_PER_CALL (1),
CDE_LOADTEST_STREAM_BATCHES (2), CDE_LOADTEST_STREAM_BATCH_SIZE (4),
CDE_LOADTEST_CONTEXT_DOCUMENTS (documents per created set, 64), CDE_LOADTEST_SEED (0),
CDE_LOADTEST_TIMEOUT (seconds per call, 60), CDE_LOADTEST_RETRY (0: failures are reported,
not retried).

    locust -f loadtest/locustfile.py --headless -u 16 -r 8 -t 60s
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

grpc_gevent.init_gevent()  # before any channel exists: gRPC waits must yield to gevent

import corpus  # noqa: E402  (locust puts this file's directory on sys.path)
from cde_client import CdeClient, EmbedResult, NotFound  # noqa: E402

DEFAULT_ADDRESS = "localhost:50051"


@dataclass(frozen=True)
class LoadSettings:
    """What the users do, read from CDE_* environment variables."""

    address: str | None
    context: str
    query_tokens: tuple[int, int]
    document_tokens: tuple[int, int]
    queries_per_call: int
    documents_per_call: int
    stream_batches: int
    stream_batch_size: int
    context_documents: int
    seed: int
    timeout_s: float
    retry: bool

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LoadSettings:
        """Settings from `env` (default: os.environ)."""
        values = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return values.get(f"CDE_LOADTEST_{name}", default)

        return cls(
            address=values.get("CDE_ADDRESS") or None,
            context=get("CONTEXT", "loadtest"),
            query_tokens=corpus.parse_range(get("QUERY_TOKENS", "4-12")),
            document_tokens=corpus.parse_range(get("DOCUMENT_TOKENS", "200-500")),
            queries_per_call=int(get("QUERIES_PER_CALL", "1")),
            documents_per_call=int(get("DOCUMENTS_PER_CALL", "1")),
            stream_batches=int(get("STREAM_BATCHES", "2")),
            stream_batch_size=int(get("STREAM_BATCH_SIZE", "4")),
            context_documents=int(get("CONTEXT_DOCUMENTS", "64")),
            seed=int(get("SEED", "0")),
            timeout_s=float(get("TIMEOUT", "60")),
            retry=get("RETRY", "0").lower() in ("1", "true", "yes"),
        )


SETTINGS = LoadSettings.from_env()
_text_numbers = itertools.count()  # texts differ from call to call, deterministically


class WrongResult(Exception):
    """The server answered, but not with one row per text."""


def next_queries(count: int) -> list[str]:
    """The next `count` queries of the generated corpus."""
    low, high = SETTINGS.query_tokens
    return [
        corpus.query(next(_text_numbers), min_tokens=low, max_tokens=high, seed=SETTINGS.seed)
        for _ in range(count)
    ]


def next_documents(count: int) -> list[str]:
    """The next `count` documents of the generated corpus."""
    low, high = SETTINGS.document_tokens
    return [
        corpus.document(next(_text_numbers), min_tokens=low, max_tokens=high, seed=SETTINGS.seed)
        for _ in range(count)
    ]


def connect(address: str) -> CdeClient:
    """A client with the load test's timeout and retry policy (API key from CDE_API_KEY)."""
    return CdeClient(address, timeout=SETTINGS.timeout_s, retry=SETTINGS.retry)


def ensure_shared_context(address: str) -> None:
    """Create the shared context set unless it exists (run once, before users start)."""
    with connect(address) as client:
        try:
            client.get_context_set(SETTINGS.context)
        except NotFound:
            documents = corpus.context_documents(SETTINGS.context_documents, seed=SETTINGS.seed)
            client.create_context_set(SETTINGS.context, documents, timeout=600)


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) does it once
    ensure_shared_context(SETTINGS.address or environment.host or DEFAULT_ADDRESS)


events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]


class CdeUser(User):
    """A locust user with its own gateway connection; reports each call as a request."""

    abstract = True
    wait_time = between(0.1, 0.5)
    client: CdeClient

    def on_start(self) -> None:
        self.client = connect(SETTINGS.address or self.host or DEFAULT_ADDRESS)

    def on_stop(self) -> None:
        self.client.close()

    def report(self, name: str, call: Callable[[], int]) -> None:
        """Run `call` (returns response bytes) and fire locust's request event for it."""
        started = time.perf_counter()
        length = 0
        error: BaseException | None = None
        try:
            length = call()
        except Exception as exc:  # every failure counts, whatever its kind
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=error,
            context={"user": type(self).__name__},
        )

    def embed(self, texts: list[str], prompt: str) -> int:
        """One Embed call on the shared context; bytes of embeddings received."""
        result = self.client.embed(texts, prompt=prompt, context=SETTINGS.context)
        return checked_size(result, len(texts))


def checked_size(result: EmbedResult, expected_rows: int) -> int:
    """Bytes of `result`'s embeddings; WrongResult unless it has `expected_rows` rows."""
    if len(result) != expected_rows:
        raise WrongResult(f"{len(result)} rows for {expected_rows} texts")
    return int(result.embeddings.nbytes)


class QueryUser(CdeUser):
    """Search traffic: short queries against the shared context set (the hot path)."""

    weight = 10

    @task
    def embed_queries(self) -> None:
        texts = next_queries(SETTINGS.queries_per_call)
        self.report("Embed/query", lambda: self.embed(texts, "query"))


class DocumentUser(CdeUser):
    """Indexing traffic: 200-500-token documents against the shared context set."""

    weight = 4
    wait_time = between(0.5, 2.0)

    @task
    def embed_documents(self) -> None:
        texts = next_documents(SETTINGS.documents_per_call)
        self.report("Embed/document", lambda: self.embed(texts, "document"))


class BulkStreamUser(CdeUser):
    """Bulk jobs: several batches of documents over one EmbedStream."""

    weight = 1
    wait_time = between(3.0, 6.0)

    @task
    def embed_stream(self) -> None:
        batches = [
            next_documents(SETTINGS.stream_batch_size) for _ in range(SETTINGS.stream_batches)
        ]
        self.report("EmbedStream/bulk", lambda: self.stream(batches))

    def stream(self, batches: list[list[str]]) -> int:
        results = list(
            self.client.embed_stream(
                batches, prompt="document", context=SETTINGS.context, timeout=SETTINGS.timeout_s
            )
        )
        if len(results) != len(batches):
            raise WrongResult(f"{len(results)} stream results for {len(batches)} batches")
        return sum(checked_size(r, len(b)) for b, r in zip(batches, results, strict=True))


class ContextSetUser(CdeUser):
    """Occasional admin traffic: create a uniquely named context set, then delete it."""

    weight = 1
    wait_time = between(10.0, 20.0)
    created: str | None = None

    @task
    def create_and_delete(self) -> None:
        name = f"{SETTINGS.context}-tmp-{uuid.uuid4().hex[:12]}"
        first = next(_text_numbers)
        documents = corpus.documents(
            SETTINGS.context_documents,
            min_tokens=16,
            max_tokens=48,
            seed=SETTINGS.seed,
            start=first,
        )

        def create() -> int:
            self.client.create_context_set(name, documents, timeout=SETTINGS.timeout_s)
            self.created = name
            return 0

        self.report("CreateContextSet", create)
        if self.created is not None:
            self.report("DeleteContextSet", self.delete_created)

    def delete_created(self) -> int:
        if self.created is not None:
            self.client.delete_context_set(self.created)
            self.created = None
        return 0

    def on_stop(self) -> None:
        if self.created is not None:  # stopped between create and delete
            with contextlib.suppress(Exception):  # best effort; the name is recognizable
                self.delete_created()
        super().on_stop()
