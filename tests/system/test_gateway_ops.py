"""Gateway operations: error table, limits, health, reflection (buf curl), metrics, `cde serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.gateway_fixtures import GatewayFactory, GatewayThread

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / ".venv" / "bin" / "buf"
Code = grpc.StatusCode


def options(name: str, **fields: Any) -> pb.CreateContextSetRequest:
    return pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **fields))


def documents(*texts: str) -> pb.CreateContextSetRequest:
    return pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=texts))


# case → (call the stub, expected code, substring of the message)
ErrorCall = Callable[[pb_grpc.EmbeddingServiceStub], object]
ERROR_CASES: dict[str, tuple[ErrorCall, grpc.StatusCode, str]] = {
    "no texts": (lambda s: s.Embed(pb.EmbedRequest()), Code.INVALID_ARGUMENT, "texts is empty"),
    "too many texts": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["a"] * 257)),
        Code.INVALID_ARGUMENT,
        "the limit is 256",
    ),
    "text too large": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["ok", "x" * 70_000])),
        Code.INVALID_ARGUMENT,
        "text 1 is 70000 bytes",
    ),
    "too long, truncate false": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["w " * 600], truncate=False)),
        Code.INVALID_ARGUMENT,
        "truncate is false",
    ),
    "unknown prompt": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["a"], prompt="nope")),
        Code.NOT_FOUND,
        'prompt "nope" not found',
    ),
    "unknown context set": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["a"], context_set="nope")),
        Code.NOT_FOUND,
        'context set "nope" not found',
    ),
    "invalid name": (
        lambda s: s.Embed(pb.EmbedRequest(texts=["a"], context_set="a b")),
        Code.INVALID_ARGUMENT,
        "invalid context set name",
    ),
    "first message not options": (
        lambda s: s.CreateContextSet(iter([documents("a")])),
        Code.INVALID_ARGUMENT,
        "first message must carry options",
    ),
    "options twice": (
        lambda s: s.CreateContextSet(iter([options("o2"), options("o2")])),
        Code.INVALID_ARGUMENT,
        "only be sent once",
    ),
    "no documents": (
        lambda s: s.CreateContextSet(iter([options("nodocs")])),
        Code.INVALID_ARGUMENT,
        "no context documents",
    ),
    "empty create stream": (
        lambda s: s.CreateContextSet(iter([])),
        Code.INVALID_ARGUMENT,
        "send options first",
    ),
    "builtin prompt": (
        lambda s: s.PutPrompt(pb.PutPromptRequest(name="query", text="q: ")),
        Code.INVALID_ARGUMENT,
        "built in",
    ),
    "delete builtin prompt": (
        lambda s: s.DeletePrompt(pb.DeletePromptRequest(name="document")),
        Code.INVALID_ARGUMENT,
        "built in",
    ),
    "prompt too long": (
        lambda s: s.PutPrompt(pb.PutPromptRequest(name="long", text="x" * 2000)),
        Code.INVALID_ARGUMENT,
        "the limit is 1024",
    ),
    "bad page token": (
        lambda s: s.ListContextSets(pb.ListContextSetsRequest(page_token="garbage!")),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    "unknown prompt delete": (
        lambda s: s.DeletePrompt(pb.DeletePromptRequest(name="nope")),
        Code.NOT_FOUND,
        "nope",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_cases(case: str, stub: pb_grpc.EmbeddingServiceStub) -> None:
    call, code, fragment = ERROR_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        call(stub)
    assert info.value.code() == code, info.value.details()
    assert fragment in (info.value.details() or "")
    assert stub.GetModelInfo(pb.GetModelInfoRequest()).hidden_size > 0  # still serving


def test_model_info_and_limits(stub: pb_grpc.EmbeddingServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.model_name, info.hidden_size, info.context_size) == ("cde-tiny", 64, 16)
    assert info.max_tokens == 512 and info.dtype == "float32" and len(info.fingerprint) == 64
    assert info.limits.max_texts_per_request == 256
    assert info.limits.max_message_bytes == 32 * 1024 * 1024


def test_stream_message_and_document_limits(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(
        max_concurrent_streams=1, max_context_documents=3, max_message_bytes=1024 * 1024
    )
    with gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        release = threading.Event()

        def slow() -> Iterator[pb.EmbedStreamRequest]:
            yield pb.EmbedStreamRequest(request=pb.EmbedRequest(texts=["a"]))
            release.wait(30)

        first = stub.EmbedStream(slow())
        assert next(first).HasField("response")  # the stream is open
        with pytest.raises(grpc.RpcError) as info:
            list(stub.EmbedStream(iter([pb.EmbedStreamRequest()])))
        assert info.value.code() == Code.RESOURCE_EXHAUSTED
        release.set()
        assert list(first) == []
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateContextSet(iter([options("lim"), documents("a", "b"), documents("c", "d")]))
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert "more than 3 context documents" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["x" * 60_000] * 20))
        assert info.value.code() == Code.RESOURCE_EXHAUSTED


def test_cancelled_stream_stops(gateway: GatewayThread, stub: pb_grpc.EmbeddingServiceStub) -> None:
    stop = threading.Event()

    def endless() -> Iterator[pb.EmbedStreamRequest]:
        while not stop.is_set():
            yield pb.EmbedStreamRequest(request=pb.EmbedRequest(texts=["again"]))

    call = stub.EmbedStream(endless())
    for _, _answer in zip(range(20), call, strict=False):
        pass
    call.cancel()
    stop.set()
    assert stub.Embed(pb.EmbedRequest(texts=["still fine"])).embeddings.rows == 1


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


def test_health_serving(gateway: GatewayThread) -> None:
    assert health_status(gateway.address) == health_pb2.HealthCheckResponse.SERVING
    service = "cde.v1.EmbeddingService"
    assert health_status(gateway.address, service) == health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_triton_is_not_serving(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(triton_url=f"127.0.0.1:{free_port()}", triton_timeout_s=2.0)
    assert health_status(gateway.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["a"]), timeout=10)
        assert info.value.code() == Code.UNAVAILABLE
        assert stub.ListPrompts(pb.ListPromptsRequest()).prompts  # store-only calls still work


def test_reflection_with_buf_curl(gateway: GatewayThread) -> None:
    url = f"http://{gateway.address}/cde.v1.EmbeddingService/GetModelInfo"
    result = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["modelName"] == "cde-tiny" and body["hiddenSize"] == 64


def test_metrics_endpoint(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(metrics_port=0)
    with gateway.channel() as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        stub.Embed(pb.EmbedRequest(texts=["a", "b"]))
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest())
    assert gateway.gateway is not None
    url = f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics"
    failed = 'cde_gateway_requests_total{code="INVALID_ARGUMENT",rpc="Embed",transport="grpc"} 1.0'
    deadline = time.monotonic() + 10
    while True:  # a call is counted just after its status reaches the client
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        if failed in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'cde_gateway_requests_total{code="OK",rpc="Embed",transport="grpc"} 1.0' in text
    assert failed in text
    assert 'cde_gateway_texts_total{stage="second"} 2.0' in text
    assert "cde_gateway_request_duration_seconds_bucket" in text
    assert "cde_gateway_context_cache_total" in text
    assert "cde_gateway_serving 1.0" in text


@pytest.fixture
def serve_process(
    triton_grpc_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        CDE_TRITON_URL=triton_grpc_url,
        CDE_PORT=str(port),
        CDE_STORE=f"sqlite://{tmp_path / 'serve.db'}",
        CDE_METRICS_PORT=str(free_port()),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cde_server.cli.main", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cde_serve_command(serve_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = serve_process
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "gateway ready" in line or not line:
            break
    assert f"127.0.0.1:{port}" in "".join(lines), "".join(lines)
    address = f"127.0.0.1:{port}"
    assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
