"""Gateway pieces that need no server: settings, status mapping, JSON logs, wire conversions."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import numpy as np
import pytest
from cde_server import errors
from cde_server.gateway.request_log import JsonFormatter, current_request_id, request_id_from
from cde_server.gateway.settings import GatewaySettings
from cde_server.gateway.status import ERROR_TABLE, error_table_markdown, status_of
from cde_server.gateway.wire import matrix, matrix_values


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDE_PORT", "6000")
    monkeypatch.setenv("CDE_TRITON_URL", "grpc://triton:8001")
    monkeypatch.setenv("CDE_METRICS_PORT", "off")
    monkeypatch.setenv("CDE_MAX_TEXTS_PER_REQUEST", "32")
    settings = GatewaySettings()
    assert (settings.port, settings.triton_url, settings.metrics_port) == (
        6000,
        "triton:8001",
        None,
    )
    assert settings.max_texts_per_request == 32 and settings.model == "demo"
    assert settings.store.startswith("sqlite:///") and settings.store.endswith("/cde.db")


def test_settings_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDE_TRITON_URL", "a:1, b:2,a:1")
    with pytest.raises(ValueError, match="listed twice"):
        GatewaySettings()
    monkeypatch.setenv("CDE_TRITON_URL", "a:1,,b:2")
    with pytest.raises(ValueError, match="empty endpoint"):
        GatewaySettings()
    monkeypatch.setenv("CDE_TRITON_URL", "grpc://a:1, b:2")
    assert GatewaySettings().triton_endpoints == ["a:1", "b:2"]
    monkeypatch.setenv("CDE_TRITON_TLS_KEY", __file__)
    with pytest.raises(ValueError, match="CDE_TRITON_TLS_CERT and CDE_TRITON_TLS_KEY"):
        GatewaySettings()
    monkeypatch.setenv("CDE_TRITON_TLS_CERT", __file__)
    with pytest.raises(ValueError, match="needs CDE_TRITON_TLS_CA"):
        GatewaySettings()
    monkeypatch.setenv("CDE_TRITON_TLS_CA", __file__ + ".missing")
    with pytest.raises(ValueError, match="triton_tls_ca"):
        GatewaySettings()
    for name in (
        "CDE_TRITON_URL",
        "CDE_TRITON_TLS_CA",
        "CDE_TRITON_TLS_CERT",
        "CDE_TRITON_TLS_KEY",
    ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDE_TLS_CERT", __file__ + ".missing")  # found before Triton starts
    monkeypatch.setenv("CDE_TLS_KEY", __file__)
    with pytest.raises(ValueError, match="tls_cert"):
        GatewaySettings()
    monkeypatch.delenv("CDE_TLS_CERT")
    monkeypatch.delenv("CDE_TLS_KEY")
    monkeypatch.setenv("CDE_MAX_TEXTS_PER_REQUEST", "0")
    with pytest.raises(ValueError):
        GatewaySettings()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgumentError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhaustedError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.StoreUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.InferenceUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceededError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.InternalError("x"), grpc.StatusCode.INTERNAL),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping(error: BaseException, code: grpc.StatusCode) -> None:
    mapped, message = status_of(error)
    assert mapped == code
    assert "secret detail" not in message


def test_error_table_renders() -> None:
    table = error_table_markdown()
    assert table.count("\n") == len(ERROR_TABLE) + 1
    assert "`FAILED_PRECONDITION`" in table


def test_request_ids_and_json_logs() -> None:
    assert request_id_from([("x-request-id", "abc-1")]) == "abc-1"
    assert request_id_from([("x-request-id", "bad id with spaces")]) != "bad id with spaces"
    assert len(request_id_from(None)) == 32
    token = current_request_id.set("req-42")
    try:
        record = logging.LogRecord("cde", logging.INFO, "f", 1, "hello %s", ("you",), None)
        record.rpc = "Embed"
        line = json.loads(JsonFormatter().format(record))
    finally:
        current_request_id.reset(token)
    assert line["message"] == "hello you" and line["request_id"] == "req-42"
    assert line["rpc"] == "Embed" and line["level"] == "INFO"


def test_matrix_round_trip() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    message = matrix(values)
    assert (message.rows, message.dim, len(message.data)) == (3, 4, 48)
    np.testing.assert_array_equal(matrix_values(message), values)


def test_readme_shows_the_current_error_table() -> None:
    from support.paths import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    assert error_table_markdown().rstrip("\n") in readme, "regenerate the README error table"
