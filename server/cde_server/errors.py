"""The gateway's domain errors: one hierarchy, mapped to gRPC status codes in one place.

Every error carries a `message` that is safe to show to clients. `code` names the
`grpc.StatusCode` member the transport layer should use (`grpc.StatusCode[error.code]`);
this module does not import grpc so the domain layer stays transport-free.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of all domain errors."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ServiceError):
    """The request is invalid whatever the server's state (bad name, limit exceeded, ...)."""

    code = "INVALID_ARGUMENT"


class NotFoundError(ServiceError):
    """A named context set or prompt does not exist."""

    code = "NOT_FOUND"


class AlreadyExistsError(ServiceError):
    """A context set of that name exists and replace was not requested."""

    code = "ALREADY_EXISTS"


class UnauthenticatedError(ServiceError):
    """No API key, or one the server does not know."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(ServiceError):
    """The caller's API key may not do this (e.g. list every tenant's sets without admin)."""

    code = "PERMISSION_DENIED"


class FailedPreconditionError(ServiceError):
    """The system is not in the state the request needs (e.g. set built with another model)."""

    code = "FAILED_PRECONDITION"


class ResourceExhaustedError(ServiceError):
    """A quota or capacity limit was hit; `retry_after` (seconds) is a hint when known."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceBusyError(ResourceExhaustedError):
    """Triton refused the request because the model's queue is full (its max_queue_size)."""


class MessageTooLargeError(ResourceExhaustedError):
    """A request message or body is larger than the server accepts (HTTP: 413)."""


class UnavailableError(ServiceError):
    """A dependency is unreachable; the request may be retried later."""

    code = "UNAVAILABLE"


class StoreUnavailableError(UnavailableError):
    """The context-set/prompt store (SQLite file or Redis) cannot be used right now."""


class InferenceUnavailableError(UnavailableError):
    """The inference backend (Triton) cannot be reached."""


class ModelFailedError(InferenceUnavailableError):
    """A Triton model's python-backend stub died: its endpoint is down until it is repaired."""

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


class DeadlineExceededError(ServiceError):
    """The work did not finish before its deadline."""

    code = "DEADLINE_EXCEEDED"


class InternalError(ServiceError):
    """A bug or an unexpected backend answer; details are logged, not returned."""

    code = "INTERNAL"
