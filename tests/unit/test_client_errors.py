"""Every gRPC status maps to its `CdeError` subclass, with message, request id and hints."""

from __future__ import annotations

import grpc
import pytest
from cde_client import errors
from cde_client.errors import CdeError, error_for_status, status_code_from_number

EXPECTED = {
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNKNOWN: errors.Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.INTERNAL: errors.Internal,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}


def test_every_error_status_has_a_class() -> None:
    assert set(EXPECTED) == {code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda code: code.name)
def test_status_maps_to_its_exception(code: grpc.StatusCode) -> None:
    error = error_for_status(code, "the server says no", [("x-request-id", "req-42")])
    assert type(error) is EXPECTED[code]
    assert isinstance(error, CdeError)
    assert error.code is code
    assert error.status == code.name
    assert error.message == "the server says no"
    assert error.request_id == "req-42"
    assert str(error) == f"the server says no ({code.name}, request id req-42)"


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda code: code.name)
def test_numeric_codes_of_stream_items_map_too(code: grpc.StatusCode) -> None:
    assert status_code_from_number(code.value[0]) is code
    assert type(error_for_status(code.value[0], "x")) is EXPECTED[code]


def test_unknown_number_and_missing_details() -> None:
    assert status_code_from_number(999) is grpc.StatusCode.UNKNOWN
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "")
    assert error.message == "not found"
    assert error.request_id is None
    assert str(error) == "not found (NOT_FOUND)"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("retry-after", "2.5")], 2.5),
        ([("grpc-retry-pushback-ms", "1500")], 1.5),
        ([("retry-after", "soon")], None),
        ([], None),
    ],
)
def test_retry_hint_is_parsed(metadata: list[tuple[str, str]], expected: float | None) -> None:
    error = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", metadata)
    assert error.retry_after == expected


def test_binary_metadata_values_are_decoded() -> None:
    error = error_for_status(grpc.StatusCode.INTERNAL, "boom", [("X-Request-Id", b"abc")])
    assert error.request_id == "abc"


def test_exceptions_are_exported_from_the_package() -> None:
    import cde_client

    for name in ("NotFound", "AlreadyExists", "InvalidArgument", "Unavailable", "CdeError"):
        assert issubclass(getattr(cde_client, name), Exception)
