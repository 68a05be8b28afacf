"""Abuse before and after authentication (issue 17): unauthenticated floods cost no parsing,
oversized messages are refused by RPC, idle streams are closed and free their slot, one
tenant cannot hold every stream slot when auth is on, and a full Triton queue is a retryable
RESOURCE_EXHAUSTED."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_client import CdeClient, HealthStatus
from cde_server.gateway.auth import Authenticator, generate_key, hash_key
from cde_server.gateway.limits import tenant_limiter
from cde_server.gateway.settings import GatewaySettings
from cde_server.triton import protocol as tp
from cde_server.triton.launcher import TritonProcess
from cde_server.triton.settings import DEFAULT_MODEL_REPOSITORY
from prometheus_client.parser import text_string_to_metric_families
from support.gateway_fixtures import GatewayFactory, GatewayThread
from support.probes import health
from support.process_fixtures import GatewayProcessFactory
from support.triton_fixtures import tiny_triton_settings

MIB = 1024 * 1024
FLOOD_MESSAGE_BYTES = 30 * MIB


def empty_texts_message(size: int) -> pb.EmbedRequest:
    """An Embed request of about `size` bytes made of empty texts (2 bytes each)."""
    return pb.EmbedRequest(texts=[""] * (size // 2))


def test_unauthenticated_floods_are_refused_before_parsing(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    key = generate_key()
    gateway = gateway_process_factory(api_keys=f"acme:{hash_key(key)}")
    process = psutil.Process(gateway.pid)
    baseline = process.memory_info().rss
    request = empty_texts_message(FLOOD_MESSAGE_BYTES)
    peak = baseline
    codes: list[grpc.StatusCode] = []
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = [("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(gateway.address, options=options) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        futures = []
        for _ in range(12):
            futures.append(stub.Embed.future(request, timeout=60))
            if len(futures) % 4 == 0:
                for future in futures[-4:]:
                    try:
                        future.result()
                    except grpc.RpcError as error:
                        codes.append(error.code())
    sampling = False
    sampler.join()
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 12
    grown_mib = (peak - baseline) / MIB
    # before: 12 such calls took the gateway from 97 MiB to 6.2 GiB
    print(f"pre-auth flood: gateway RSS {baseline / MIB:.0f} MiB, peak +{grown_mib:.0f} MiB")
    assert grown_mib < 600, f"gateway RSS grew by {grown_mib:.0f} MiB"


def test_messages_larger_than_the_rpc_needs_are_refused(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    key = generate_key()
    gateway = gateway_process_factory(api_keys=f"acme:{hash_key(key)}")
    metadata = (("authorization", f"Bearer {key}"),)
    options = [("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(gateway.address, options=options) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        try:
            stub.Embed(empty_texts_message(FLOOD_MESSAGE_BYTES), metadata=metadata, timeout=60)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the limit is" in (error.details() or "")
        else:
            raise AssertionError("a 30 MiB Embed was accepted")
        big_name = pb.GetContextSetRequest(name="x" * (128 * 1024))
        try:
            stub.GetContextSet(big_name, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            raise AssertionError("a 128 KiB GetContextSet was accepted")


def idle_create() -> Iterator[pb.CreateContextSetRequest]:
    yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name="idle"))
    time.sleep(30)  # then nothing: a client holding a stream slot


def test_idle_streams_are_closed_and_free_their_slot(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    gateway = gateway_process_factory(stream_idle_timeout_s=1, max_concurrent_streams=1)
    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        started = time.monotonic()
        try:
            stub.CreateContextSet(idle_create(), timeout=60)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
            assert "CDE_STREAM_IDLE_TIMEOUT_S" in (error.details() or "")
        else:
            raise AssertionError("an idle stream was kept open")
        assert time.monotonic() - started < 10
        # the only slot is free again: a real upload goes through
        documents = pb.DocumentBatch(documents=["alpha", "beta"])
        created = stub.CreateContextSet(
            iter(
                [
                    pb.CreateContextSetRequest(options=pb.ContextSetOptions(name="real")),
                    pb.CreateContextSetRequest(documents=documents),
                ]
            ),
            timeout=60,
        )
        assert created.context_set.name == "real"


def test_with_auth_on_one_tenant_gets_a_quarter_of_the_stream_slots() -> None:
    settings = GatewaySettings(triton_url="unused:1", max_concurrent_streams=64)
    keyed = Authenticator.from_file(None, f"acme:{hash_key(generate_key())}")
    assert tenant_limiter(settings, keyed).limits_of("acme").max_streams == 16
    open_server = tenant_limiter(settings, Authenticator(None))
    assert open_server.limits_of("").max_streams == 0  # auth off: only the server-wide cap


def test_a_flood_is_refused_early_and_another_tenant_still_gets_through(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    flooder, other = generate_key(), generate_key()
    gateway = gateway_process_factory(
        api_keys=f"flood:{hash_key(flooder)},other:{hash_key(other)}",
        max_texts_in_flight=64,
        max_queued_texts=256,
    )
    texts = ["lorem ipsum dolor sit amet " * 40] * 64
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def flood_call(stub: pb_grpc.EmbeddingServiceStub) -> None:
        started = time.monotonic()
        try:
            stub.Embed(
                pb.EmbedRequest(texts=texts),
                metadata=(("authorization", f"Bearer {flooder}"),),
                timeout=120,
            )
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        with lock:
            outcomes.append((code, time.monotonic() - started))

    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        other_metadata = (("authorization", f"Bearer {other}"),)
        stub.Embed(pb.EmbedRequest(texts=["warm up"]), metadata=other_metadata, timeout=60)
        solo_started = time.monotonic()
        stub.Embed(pb.EmbedRequest(texts=["alone"]), metadata=other_metadata, timeout=60)
        solo_s = time.monotonic() - solo_started
        threads = [threading.Thread(target=flood_call, args=(stub,)) for _ in range(30)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        stub.Embed(pb.EmbedRequest(texts=["during the flood"]), metadata=other_metadata, timeout=60)
        during_s = time.monotonic() - started
        for thread in threads:
            thread.join()
    refused = [seconds for code, seconds in outcomes if code == "RESOURCE_EXHAUSTED"]
    served = [seconds for code, seconds in outcomes if code == "OK"]
    print(
        f"flood: {len(served)} served, {len(refused)} refused (slowest refusal "
        f"{max(refused, default=0):.3f} s); other tenant's 1-text Embed {solo_s:.3f} s alone, "
        f"{during_s:.3f} s during the flood"
    )
    assert refused and max(refused) < 1.0
    assert {code for code, _ in outcomes} <= {"OK", "RESOURCE_EXHAUSTED"}
    assert during_s < max(served) * 0.75  # far from waiting for the whole flood


def test_connections_without_a_handshake_are_closed(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    gateway = gateway_process_factory(handshake_timeout_s=1)
    host, port = gateway.address.rsplit(":", 1)
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    started = time.monotonic()
    for connection in sockets:
        with connection:
            while connection.recv(4096):  # the server's SETTINGS, then end of stream
                pass
    assert time.monotonic() - started < 8


Outcome = tuple[grpc.StatusCode, str, dict[str, str]]  # code, details, trailers


def embed_at_once(address: str, calls: int) -> list[Outcome]:
    """`calls` Embed calls of 32 long texts each, all at once; each one's outcome."""
    texts = ["lorem ipsum dolor sit amet " * 60] * 32
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def call(stub: pb_grpc.EmbeddingServiceStub, index: int) -> None:
        request = pb.EmbedRequest(texts=[f"{index} {text}" for text in texts])
        outcome: Outcome
        try:
            stub.Embed(request, timeout=300)
            outcome = (grpc.StatusCode.OK, "", {})
        except grpc.RpcError as error:
            trailers = {key: str(value) for key, value in error.trailing_metadata() or ()}
            outcome = (error.code(), error.details() or "", trailers)
        with lock:
            outcomes.append(outcome)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        stub.Embed(pb.EmbedRequest(texts=["warm up"]), timeout=60)
        threads = [threading.Thread(target=call, args=(stub, i)) for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return outcomes


def gateway_metric(gateway: GatewayThread, name: str, **labels: str) -> float:
    """The sum of a gateway's samples called `name` whose labels include `labels`."""
    assert gateway.gateway is not None and gateway.gateway.metrics_port is not None
    url = f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_a_full_triton_queue_is_resource_exhausted_with_retry_after_and_the_endpoint_stays_up(
    tmp_path: Path, gateway_factory: GatewayFactory, triton_grpc_url: str
) -> None:
    """Triton's max_queue_size (here 1 for the second stage) refuses with UNAVAILABLE "Exceeds
    maximum queue size". Alone, that Triton's refusals are RESOURCE_EXHAUSTED with retry-after
    and its endpoint stays in service; beside another Triton, the refused requests are served
    there and neither endpoint is marked down."""
    repository = tmp_path / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repository)
    config = repository / tp.SECOND_STAGE_MODEL / "configs" / "cpu.pbtxt"
    text = config.read_text()
    assert "max_queue_size: 2048" in text
    config.write_text(text.replace("max_queue_size: 2048", "max_queue_size: 1"))
    settings = tiny_triton_settings(tmp_path / "cache", triton_model_repository=repository)
    with TritonProcess(settings) as triton:
        # health checks far apart (their 2 s readiness timeout, not the refusals under test,
        # could mark an endpoint down on a loaded host) and time enough for a slow queue
        quiet = {
            "max_texts_in_flight": 4096,
            "health_interval_s": 120.0,
            "triton_timeout_s": 300.0,
        }
        alone = gateway_factory(triton_url=triton.grpc_url, **quiet)
        outcomes = embed_at_once(alone.address, 24)
        assert health(alone.address) == HealthStatus.SERVING
        with CdeClient(alone.address, retry=False) as client:
            assert client.embed(["after"]).embeddings.shape[0] == 1
        pooled = gateway_factory(
            triton_url=f"{triton.grpc_url},{triton_grpc_url}", metrics_port=0, **quiet
        )
        served_elsewhere = embed_at_once(pooled.address, 16)
        busy = gateway_metric(
            pooled, "cde_gateway_triton_endpoint_calls_total", endpoint=triton.grpc_url,
            result="busy",
        )  # fmt: skip
        up = gateway_metric(pooled, "cde_gateway_triton_endpoint_up", endpoint=triton.grpc_url)
    refused = [o for o in outcomes if o[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    print(
        f"\nTriton queue of 1: {len(outcomes) - len(refused)} served, {len(refused)} refused; "
        f"beside another Triton all {len(served_elsewhere)} served, {busy:.0f} tried elsewhere"
    )
    assert {code for code, _, _ in outcomes} <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    assert refused, "Triton's queue bound was never reached"
    for _, details, trailers in refused:
        assert "its queue is full); retry shortly" in details, details
        assert float(trailers["retry-after"]) > 0
    assert {code for code, _, _ in served_elsewhere} == {grpc.StatusCode.OK}
    assert busy > 0 and up == 1.0
