"""Exceptions raised by the client: one class per gRPC status, all under `CdeError`.

Every error carries the server's message, its status code and, when the server sent one,
the request id (`x-request-id` trailing metadata) to quote in bug reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import grpc

REQUEST_ID_KEY = "x-request-id"
_RETRY_AFTER_KEYS = ("retry-after", "grpc-retry-pushback-ms")


class CdeError(Exception):
    """Base of every error the client raises for a failed call."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        """Seconds the server asked the client to wait before retrying, when it said."""

    @property
    def status(self) -> str:
        """The status code's name, e.g. "NOT_FOUND"."""
        return str(self.code.name)

    def __str__(self) -> str:
        details = self.status
        if self.request_id:
            details += f", request id {self.request_id}"
        return f"{self.message} ({details})"


class Cancelled(CdeError):
    """The call was cancelled (usually by the caller)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(CdeError):
    """The server failed in a way it could not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(CdeError):
    """The request is invalid whatever the server's state (bad name, too many texts, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CdeError):
    """The call did not finish before its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(CdeError):
    """The named context set or prompt does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CdeError):
    """A context set of that name exists (pass replace=True to replace it)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CdeError):
    """The API key may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CdeError):
    """A rate, quota or capacity limit was hit; see `retry_after`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CdeError):
    """The server is not in the state the request needs (e.g. set built with another model)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(CdeError):
    """The call was aborted by a conflict; it may be retried."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(CdeError):
    """A value is out of the valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(CdeError):
    """The server does not implement this call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CdeError):
    """A server bug or an unexpected backend answer."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(CdeError):
    """The server (or a backend behind it) cannot be reached right now; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(CdeError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(CdeError):
    """No valid API key was given."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ProtocolError(CdeError):
    """The server's answer does not follow the API (a client/server version mismatch?)."""

    code = grpc.StatusCode.INTERNAL


class InconsistentResult(CdeError):
    """The parts of a split call disagree (e.g. the context set was replaced meanwhile)."""

    code = grpc.StatusCode.ABORTED


ERROR_CLASSES: dict[grpc.StatusCode, type[CdeError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
"""The exception class of each non-OK status."""

_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a google.rpc.Code number (UNKNOWN for unknown numbers)."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_for_status(
    code: grpc.StatusCode | int,
    message: str,
    metadata: Iterable[tuple[str, Any]] | None = None,
) -> CdeError:
    """The exception for a failed call: its class follows `code`; ids/hints come from metadata."""
    if isinstance(code, int):
        code = status_code_from_number(code)
    cls = ERROR_CLASSES.get(code, Unknown)
    entries = _metadata_dict(metadata)
    return cls(
        message or code.name.lower().replace("_", " "),
        request_id=entries.get(REQUEST_ID_KEY),
        retry_after=_retry_after(entries),
    )


def error_from_rpc(error: grpc.RpcError) -> CdeError:
    """Convert a grpc (sync or asyncio) RpcError into the matching `CdeError`."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    cde_error = error_for_status(code or grpc.StatusCode.UNKNOWN, message or "", metadata)
    cde_error.__cause__ = error
    return cde_error


def _metadata_dict(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    entries: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        entries.setdefault(key.lower(), str(value))
    return entries


def _retry_after(entries: dict[str, str]) -> float | None:
    for key in _RETRY_AFTER_KEYS:
        raw = entries.get(key)
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            continue
        return seconds / 1000.0 if key.endswith("-ms") else seconds
    return None
