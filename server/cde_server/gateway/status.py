"""The one mapping from domain errors to gRPC status codes and HTTP statuses, and the
documented error table.

`ERROR_TABLE` is the source of the README's error table (`error_table_markdown()`); the
gateway tests check every row against a running server. `http_status_of` is the HTTP side of
the same mapping: each gRPC code has one HTTP status (`HTTP_STATUS`), except a body over the
size limit (`MessageTooLargeError`), which is 413.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from cde_server.errors import InternalError, MessageTooLargeError, ServiceError

logger = logging.getLogger("cde_server.gateway.status")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """gRPC status code and client-facing message for an exception raised while serving."""
    if isinstance(exc, ServiceError):
        if isinstance(exc, InternalError):
            return grpc.StatusCode.INTERNAL, f"internal error: {exc.message}"
        return grpc.StatusCode[exc.code], exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    logger.error("unexpected error: %s", exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the gateway log for this request id)"


HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}
"""The HTTP status of each gRPC code (the HTTP API answers errors with these)."""

PAYLOAD_TOO_LARGE = 413


def http_status_of(exc: BaseException) -> tuple[int, grpc.StatusCode, str]:
    """HTTP status, gRPC code and client-facing message for an exception raised while serving."""
    code, message = status_of(exc)
    if isinstance(exc, MessageTooLargeError):
        return PAYLOAD_TOO_LARGE, code, message
    return HTTP_STATUS.get(code, 500), code, message


@dataclass(frozen=True)
class ErrorCase:
    """One documented failure: what the caller did, the status, an example message."""

    case: str
    code: grpc.StatusCode
    message: str
    http_status: int | None = None
    """The HTTP status when it is not the code's usual one (`HTTP_STATUS`)."""

    @property
    def http(self) -> int:
        """The HTTP API's status for this case."""
        return self.http_status if self.http_status is not None else HTTP_STATUS[self.code]


ERROR_TABLE: tuple[ErrorCase, ...] = (
    ErrorCase("Request bytes that do not parse (a text field not UTF-8, truncated or not "
              "protobuf), in any RPC or stream message", grpc.StatusCode.INVALID_ARGUMENT,
              "the request is not a valid cde.v1.EmbedRequest message: Error parsing message "
              "... (text fields must be UTF-8; ...)"),
    ErrorCase("Embed with no texts", grpc.StatusCode.INVALID_ARGUMENT,
              "texts is empty; send 1 to 256 texts"),
    ErrorCase("More texts than CDE_MAX_TEXTS_PER_REQUEST", grpc.StatusCode.INVALID_ARGUMENT,
              "300 texts in one request; the limit is 256"),
    ErrorCase("A text larger than CDE_MAX_TEXT_BYTES", grpc.StatusCode.INVALID_ARGUMENT,
              "text 3 is 70000 bytes; the limit is 65536"),
    ErrorCase("truncate=false and a text that does not fit in max_tokens",
              grpc.StatusCode.INVALID_ARGUMENT,
              "1 text(s) do not fit in the model's 512 tokens (indices 0) and truncate is false"),
    ErrorCase("Invalid context set or prompt name", grpc.StatusCode.INVALID_ARGUMENT,
              "invalid context set name 'a b': use 1 to 64 characters of letters, digits, ..."),
    ErrorCase("Unknown prompt", grpc.StatusCode.NOT_FOUND,
              'prompt "legal" not found; built-in prompts are query, document, ...'),
    ErrorCase("Unknown context set (Embed, Get, Delete)", grpc.StatusCode.NOT_FOUND,
              'context set "docs" not found'),
    ErrorCase("Invalid revision in a context set reference (name@N)",
              grpc.StatusCode.INVALID_ARGUMENT,
              "invalid context set revision 'x' in docs@x: use name@N with N a revision number "
              "(1, 2, ...), or name alone for the active revision"),
    ErrorCase("A pinned (name@N) or activated revision that was pruned, deleted or never made",
              grpc.StatusCode.NOT_FOUND,
              'context set "docs" revision 2 was pruned or deleted; the kept revisions are 4, 5, '
              "6, 7, 8 (active: 8)"),
    ErrorCase("DeleteContextSet of the active revision alone (name@N)",
              grpc.StatusCode.FAILED_PRECONDITION,
              'revision 8 is the active revision of context set "docs"; activate another first, '
              "or delete the whole set"),
    ErrorCase("Context set built with another model", grpc.StatusCode.FAILED_PRECONDITION,
              'context set "docs" was built with model 3f2a9c..., but this server runs model '
              "9c1e07...; rebuild it with replace"),
    ErrorCase("CreateContextSet: empty stream", grpc.StatusCode.INVALID_ARGUMENT,
              "the stream is empty; send options first"),
    ErrorCase("CreateContextSet: first message is not options", grpc.StatusCode.INVALID_ARGUMENT,
              "the first message must carry options"),
    ErrorCase("CreateContextSet: options sent twice", grpc.StatusCode.INVALID_ARGUMENT,
              "options may only be sent once, in the first message"),
    ErrorCase("CreateContextSet: no documents", grpc.StatusCode.INVALID_ARGUMENT,
              "no context documents were sent; send at least 1"),
    ErrorCase("CreateContextSet: more than CDE_MAX_CONTEXT_DOCUMENTS",
              grpc.StatusCode.INVALID_ARGUMENT,
              "more than 16384 context documents were sent (the limit); send a sample ..."),
    ErrorCase("CreateContextSet: documents over CDE_MAX_CONTEXT_BYTES in total",
              grpc.StatusCode.INVALID_ARGUMENT,
              "the context documents exceed the limit of 67108864 bytes in total at document "
              "9000; ..."),
    ErrorCase("CreateContextSet: name exists and replace is false",
              grpc.StatusCode.ALREADY_EXISTS,
              'context set "docs" already exists; use replace to rebuild it'),
    ErrorCase("CreateContextSet: an idempotency key (or HTTP Idempotency-Key) that is not 1 to "
              "128 printable ASCII characters", grpc.StatusCode.INVALID_ARGUMENT,
              "invalid idempotency key 'a b': use 1 to 128 printable ASCII characters without "
              "spaces (a UUID is a good choice)"),
    ErrorCase("CreateContextSet: an idempotency key the set's retained revisions carry, with "
              "other options or documents", grpc.StatusCode.FAILED_PRECONDITION,
              'idempotency key "k1" was already used for a different create of context set '
              '"docs" (revision 3); use a new key for a new create'),
    ErrorCase("CreateContextSet: a new set beyond CDE_MAX_CONTEXT_SETS_PER_TENANT (not "
              "retryable until the tenant deletes one; no retry-after)",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              "quota exceeded: this tenant has 1000 context sets and its limit is 1000; delete a "
              "context set before creating another (retrying will not help until then)"),
    ErrorCase("CreateContextSet: a revision that would take the tenant's stored bytes past "
              "CDE_MAX_STORED_BYTES_PER_TENANT (after pruning; not retryable until it frees "
              "space; no retry-after)", grpc.StatusCode.RESOURCE_EXHAUSTED,
              "quota exceeded: this tenant's context sets use 1073000000 bytes and the new "
              "revision needs 1600000 more, over its limit of 1073741824 stored bytes; delete "
              'context sets or old revisions ("name@N") to free space (retrying will not help '
              "until then)"),
    ErrorCase("PutPrompt/DeletePrompt on a built-in prompt", grpc.StatusCode.INVALID_ARGUMENT,
              'prompt "query" is built in and cannot be changed; use another name'),
    ErrorCase("Prompt text over 1024 bytes", grpc.StatusCode.INVALID_ARGUMENT,
              'prompt "p" text is 2000 bytes; the limit is 1024'),
    ErrorCase("More than 1000 custom prompts", grpc.StatusCode.RESOURCE_EXHAUSTED,
              "there are already 1000 custom prompts (the limit); delete one first"),
    ErrorCase("Bad page_token", grpc.StatusCode.INVALID_ARGUMENT,
              "invalid page_token; pass the next_page_token of a listing"),
    ErrorCase("Message larger than CDE_MAX_MESSAGE_BYTES", grpc.StatusCode.RESOURCE_EXHAUSTED,
              "Received message larger than max (...)", http_status=PAYLOAD_TOO_LARGE),
    ErrorCase("GetContextSet answer (documents, embeddings) over CDE_MAX_MESSAGE_BYTES",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              "the context set with its documents and embeddings is 40000000 bytes, over the "
              "33554432-byte message limit; ask for include_documents and include_embeddings "
              "in separate calls, or raise CDE_MAX_MESSAGE_BYTES (...)"),
    ErrorCase("A message larger than its RPC can need (Embed: max_texts_per_request texts of "
              "max_text_bytes; Get, List, Delete, prompts: 64 KiB), refused before parsing",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              "an Embed message of 31457282 bytes; the limit is 17895424 (what a valid request "
              "can need)"),
    ErrorCase("A request stream that sends nothing for CDE_STREAM_IDLE_TIMEOUT_S",
              grpc.StatusCode.DEADLINE_EXCEEDED,
              "the request stream sent nothing for 60 s (CDE_STREAM_IDLE_TIMEOUT_S); it was "
              "closed"),
    ErrorCase("Work beyond CDE_MAX_TEXTS_IN_FLIGHT while CDE_MAX_QUEUED_TEXTS of the tenant's "
              "already wait (retry-after trailer)", grpc.StatusCode.RESOURCE_EXHAUSTED,
              "the server is at capacity (512 texts in flight, 16384 of yours queued); retry "
              "shortly"),
    ErrorCase("Triton's queue of a model is full (its max_queue_size) on every endpoint "
              "(retry-after trailer)", grpc.StatusCode.RESOURCE_EXHAUSTED,
              "the inference server is at capacity (cde_second_stage: its queue is full); "
              "retry shortly"),
    ErrorCase("The caller's deadline passed while its call waited for capacity",
              grpc.StatusCode.DEADLINE_EXCEEDED,
              "the deadline passed while the call waited for capacity"),
    ErrorCase("More than CDE_MAX_CONCURRENT_STREAMS open streams",
              grpc.StatusCode.RESOURCE_EXHAUSTED, "64 streams are open (the limit); retry later"),
    ErrorCase("No API key, or an unknown one (auth on)", grpc.StatusCode.UNAUTHENTICATED,
              "missing API key; send 'authorization: Bearer <API key>'"),
    ErrorCase("30 failed authentications from one address within 10 s (retry-after trailer)",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              "too many failed authentications from this address; retry in 9.8 s"),
    ErrorCase("ListContextSets all_tenants without an admin key",
              grpc.StatusCode.PERMISSION_DENIED, "all_tenants needs an admin API key"),
    ErrorCase("A tenant over CDE_RATE_LIMIT_RPS (retry-after trailer)",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              'tenant "acme" is over the rate limit of 5 calls/s (burst 10); retry in 0.20 s'),
    ErrorCase("A tenant over CDE_MAX_STREAMS_PER_TENANT open streams",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              'tenant "acme" has 4 streams open (its limit); retry later'),
    ErrorCase("No Triton endpoint reachable and ready", grpc.StatusCode.UNAVAILABLE,
              "no inference server is available (127.0.0.1:8001 (down), 127.0.0.1:8011 (down))"),
    ErrorCase("Store (SQLite/Redis) unreachable", grpc.StatusCode.UNAVAILABLE,
              "Redis store redis://127.0.0.1:6379/0 unavailable: ..."),
    ErrorCase("Context set replaced while a request needed its embeddings",
              grpc.StatusCode.UNAVAILABLE,
              'context set "docs" was replaced during the request; retry'),
    ErrorCase("Caller's deadline passed while waiting for the model",
              grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for the model"),
    ErrorCase("Unexpected server or model failure", grpc.StatusCode.INTERNAL,
              "internal error: inference failed (cde_second_stage, INTERNAL)"),
)  # fmt: skip


HTTP_ERROR_TABLE: tuple[ErrorCase, ...] = (
    ErrorCase("HTTP request body larger than CDE_MAX_MESSAGE_BYTES",
              grpc.StatusCode.RESOURCE_EXHAUSTED,
              "the request body is larger than the limit of 33554432 bytes",
              http_status=PAYLOAD_TOO_LARGE),
    ErrorCase("HTTP: a JSON body that does not parse or does not match the schema",
              grpc.StatusCode.INVALID_ARGUMENT,
              "input: Input should be a valid string (body.input)"),
    ErrorCase("/v1/embeddings: a model string that names no context set, or @revision that "
              "is not the set's current one", grpc.StatusCode.NOT_FOUND,
              'context set "docs" has revision 2; revision 3 does not exist (only the current '
              "revision is kept)"),
    ErrorCase("/v1/embeddings: dimensions other than the model's size",
              grpc.StatusCode.INVALID_ARGUMENT,
              "dimensions=256 is not supported: CDE is not trained for shortened vectors; "
              "this model returns 768 dimensions"),
    ErrorCase("/v1/embeddings: a token id outside the vocabulary, or token ids longer than "
              "max_tokens with truncate=false", grpc.StatusCode.INVALID_ARGUMENT,
              "input[0] has token id 40000; ids must lie in [0, 30522)"),
)  # fmt: skip
"""Failures only the HTTP API has (its tests check each row)."""


def error_table_markdown(rows: tuple[ErrorCase, ...] = ERROR_TABLE) -> str:
    """An error table as Markdown, for the README (default: `ERROR_TABLE`)."""
    lines = ["| Case | Status | HTTP | Example message |", "| --- | --- | --- | --- |"]
    for row in rows:
        message = row.message.replace("|", "\\|")
        lines.append(f"| {row.case} | `{row.code.name}` | {row.http} | {message} |")
    return "\n".join(lines)
