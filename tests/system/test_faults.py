"""Faults against real processes: Triton killed and restarted, gateway SIGTERM and SIGKILL (also
in the middle of context-set revision work, issue 15), Redis outage, client cancellation and
deadlines (issue 7, "Faults")."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_client import CdeClient, HealthStatus, NotFound, Unavailable
from cde_server.triton import protocol as tp
from cde_server.triton.launcher import TritonProcess
from prometheus_client.parser import text_string_to_metric_families
from support.gateway_fixtures import GatewayFactory, ignore_poller_wakeups
from support.probes import health, wait_for
from support.process_fixtures import GatewayProcess, GatewayProcessFactory
from support.store_fixtures import RedisServer
from support.triton_fixtures import tiny_triton_settings

Code = grpc.StatusCode
Matrix = npt.NDArray[np.float32]
DOCUMENTS = [f"document {i} about topic {i % 7} and its details" for i in range(40)]
QUERIES = ["who wrote hamlet", "capital of france", "how do vaccines work"]


# --- helpers -------------------------------------------------------------------------------------
def create_request(name: str, texts: list[str]) -> Iterator[pb.CreateContextSetRequest]:
    yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name))
    yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=texts))


def triton_calls(metrics_url: str) -> float:
    """Finished Triton inference calls of a gateway for embedding (its Prometheus endpoint;
    cde_model_info is left out: the health monitor reads it every interval)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "cde_gateway_triton_request_duration_seconds":
            total += sum(
                sample.value
                for sample in family.samples
                if sample.name.endswith("_count") and sample.labels["model"] != tp.MODEL_INFO_MODEL
            )
    return total


def metrics_url(gateway: Any) -> str:
    assert gateway.gateway is not None and gateway.gateway.metrics_port is not None
    return f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics"


def first_stage_stats(triton_url: str) -> dict[str, int]:
    """Triton's statistics of cde_first_stage: rows computed, successes and failures."""
    with triton_grpc.InferenceServerClient(triton_url) as client:
        stats = client.get_inference_statistics(tp.FIRST_STAGE_MODEL, as_json=True)
    model = stats["model_stats"][0]
    inference = model["inference_stats"]
    return {
        "rows": int(model.get("inference_count", 0)),
        "success": int(inference["success"].get("count", 0)),
        "fail": int(inference["fail"].get("count", 0)),
        "computed": int(inference["compute_infer"].get("count", 0)),
    }


class BusyFirstStage:
    """Keeps Triton's single cde_first_stage instance busy with `count` requests of 64 rows x
    512 tokens, sent at once from a background loop; entering returns once at least two full
    batches of them wait in Triton's queue, so anything sent later queues behind them."""

    ROWS, WIDTH = 64, 512
    QUEUED = 8  # two dynamic batches of max_batch_size 256 rows

    def __init__(self, triton: TritonProcess, count: int = 16) -> None:
        self.triton = triton
        self.count = count
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> BusyFirstStage:
        self._thread.start()
        wait_for(lambda: self.pending() >= self.QUEUED, 30, "queued in Triton")
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(120)

    def pending(self) -> float:
        """Triton's count of cde_first_stage requests waiting for execution."""
        text = urllib.request.urlopen(self.triton.metrics_url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "nv_inference_pending_request_count":
                for sample in family.samples:
                    if sample.labels.get("model") == tp.FIRST_STAGE_MODEL:
                        return sample.value
        return 0.0

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(ignore_poller_wakeups)  # a second grpc.aio loop in-process
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()

    async def _run(self) -> None:
        ids = np.random.default_rng(0).integers(1000, 2000, (self.ROWS, self.WIDTH))
        inputs = []
        for name, values in ((tp.INPUT_IDS, ids), (tp.ATTENTION_MASK, np.ones_like(ids))):
            tensor = triton_grpc.InferInput(name, list(values.shape), "INT64")
            tensor.set_data_from_numpy(values.astype(np.int64))
            inputs.append(tensor)
        async with triton_aio.InferenceServerClient(self.triton.grpc_url) as client:
            calls = [
                asyncio.ensure_future(client.infer(tp.FIRST_STAGE_MODEL, inputs))
                for _ in range(self.count)
            ]
            for result in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(result, BaseException):
                    self.errors.append(result)


# --- Triton killed under load ---------------------------------------------------------------------
class Load:
    """Threads calling Embed on the named context in a loop, recording (code, seconds)."""

    def __init__(self, address: str, context: str, deadline_s: float, threads: int = 3) -> None:
        self.address, self.context, self.deadline_s = address, context, deadline_s
        self.results: list[tuple[grpc.StatusCode, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            request = pb.EmbedRequest(texts=QUERIES, context_set=self.context, prompt="query")
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    stub.Embed(request, timeout=self.deadline_s)
                    code = Code.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                self.results.append((code, time.monotonic() - started))
                if code != Code.OK:
                    time.sleep(0.05)

    def count(self, code: grpc.StatusCode) -> int:
        return sum(1 for c, _ in self.results if c == code)


def test_triton_killed_under_load_recovers_without_gateway_restart(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    triton = TritonProcess(
        tiny_triton_settings(tmp_path / "triton-cache", triton_startup_timeout_s=120.0),
        log=lambda _: None,
    )
    triton.start()
    restarted: TritonProcess | None = None
    try:
        gateway = gateway_factory(triton_url=triton.grpc_url, health_interval_s=0.5)
        with CdeClient(gateway.address, retry=False, timeout=30) as client:
            client.create_context_set("killed", DOCUMENTS)
            before = client.embed_queries(QUERIES, context="killed").embeddings
        deadline_s = 10.0
        with Load(gateway.address, "killed", deadline_s) as load:
            wait_for(lambda: load.count(Code.OK) >= 5, 30, "loaded")
            assert triton.pid is not None
            os.killpg(triton.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            triton.stop()  # reap, remove its shared memory
            down_s = wait_for(
                lambda: health(gateway.address) == HealthStatus.NOT_SERVING, 10, "NOT_SERVING"
            )
            wait_for(lambda: load.count(Code.UNAVAILABLE) >= 10, 10, "failing")
            failures = [(c, s) for c, s in load.results if c != Code.OK]
            restarted = TritonProcess(triton.settings, log=lambda _: None)
            restarted.start()
            restarted_at = time.monotonic()
            up_s = wait_for(lambda: health(gateway.address) == HealthStatus.SERVING, 30, "SERVING")
            served = load.count(Code.OK)
            wait_for(lambda: load.count(Code.OK) >= served + 5, 30, "serving again")
        assert {c for c, _ in failures} == {Code.UNAVAILABLE}, failures
        slowest = max(s for _, s in failures)
        assert slowest < deadline_s / 4, f"a failing call took {slowest:.2f} s"
        with CdeClient(gateway.address, retry=False, timeout=30) as client:
            after = client.embed_queries(QUERIES, context="killed").embeddings
        np.testing.assert_allclose(after, before, atol=1e-5)
        assert gateway.gateway is not None  # the new Triton's empty cache was refilled
        misses = gateway.gateway.metrics.registry.get_sample_value(
            "cde_gateway_context_cache_total", {"result": "miss"}
        )
        assert misses is not None and misses >= 2, misses
        print(
            f"\nNOT_SERVING {down_s:.1f} s after the kill; {len(failures)} failed calls, slowest "
            f"{slowest * 1000:.0f} ms; Triton down {restarted_at - killed_at:.1f} s; SERVING "
            f"{up_s:.1f} s after Triton was ready"
        )
    finally:
        if restarted is not None:
            restarted.stop()
        triton.stop()


# --- gateway SIGTERM and SIGKILL (real `cde serve` processes) ------------------------------------
def crash_during(
    call: Any, process: GatewayProcess, then: Callable[[], object] | None = None
) -> None:
    """SIGKILL the gateway half a second into the in-flight `call` (a grpc future), run `then`,
    and check that the call failed UNAVAILABLE."""
    time.sleep(0.5)
    assert not call.done(), "the call finished before the crash"
    process.kill()
    if then is not None:
        then()
    with pytest.raises(grpc.RpcError) as crashed:
        call.result()
    assert crashed.value.code() == Code.UNAVAILABLE


def test_gateway_sigterm_drains_in_flight_calls_and_exits_cleanly(
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    grace_s = 10.0
    process = gateway_process_factory(shutdown_grace_s=grace_s)
    with CdeClient(process.address, retry=False, timeout=30) as client:
        client.create_context_set("before", DOCUMENTS)
        client.put_prompt("legal", "legal document: ")
    signalled = threading.Event()

    def slow_upload() -> Iterator[pb.CreateContextSetRequest]:
        yield pb.CreateContextSetRequest(options=pb.ContextSetOptions(name="in-flight"))
        yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=DOCUMENTS[:20]))
        signalled.wait(30)
        time.sleep(1.0)  # keep uploading after the signal
        yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=DOCUMENTS[20:]))

    items = 300

    def bulk() -> Iterator[pb.EmbedStreamRequest]:
        for i in range(items):
            yield pb.EmbedStreamRequest(request=pb.EmbedRequest(texts=[f"bulk text {i}"] * 8))

    with grpc.insecure_channel(process.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        create = stub.CreateContextSet.future(slow_upload(), timeout=60)
        stream = stub.EmbedStream(bulk(), timeout=60)
        answers = [next(stream)]  # both calls are in flight
        time.sleep(0.2)
        process.signal(signal.SIGTERM)
        signalled.set()
        started = time.monotonic()
        time.sleep(0.3)
        with (  # new calls are refused
            grpc.insecure_channel(process.address) as fresh,
            pytest.raises(grpc.RpcError) as refused,
        ):
            pb_grpc.EmbeddingServiceStub(fresh).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert refused.value.code() == Code.UNAVAILABLE
        answers += list(stream)
        created = create.result()
    code = process.wait(grace_s + 5)
    exit_s = time.monotonic() - started
    assert code == 0, process.output()
    assert exit_s < grace_s, f"exited {exit_s:.1f} s after SIGTERM"
    assert len(answers) == items and all(a.HasField("response") for a in answers)
    assert created.context_set.name == "in-flight"
    assert created.context_set.source_document_count == len(DOCUMENTS)
    process.start()  # same port, same store
    with CdeClient(process.address, retry=False, timeout=30) as client:
        names = {s.name for s in client.list_context_sets()}
        assert names >= {"before", "in-flight"}
        assert "legal" in {p.name for p in client.list_prompts()}
        assert client.embed_queries(QUERIES, context="in-flight").embeddings.shape[0] == 3
    print(f"\ngateway exited with 0 {exit_s:.1f} s after SIGTERM (grace {grace_s:.0f} s)")


def test_gateway_crash_during_create_leaves_no_half_written_set(
    gateway_process_factory: GatewayProcessFactory, store_url: str, triton_process: TritonProcess
) -> None:
    process = gateway_process_factory(store=store_url)
    with CdeClient(process.address, retry=False, timeout=30) as client:
        client.create_context_set("kept", DOCUMENTS[:10])
    with grpc.insecure_channel(process.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with BusyFirstStage(triton_process):  # stage 1 of the create waits behind these
            create = stub.CreateContextSet.future(create_request("torn", DOCUMENTS), timeout=60)
            crash_during(create, process)
    process.start()
    with CdeClient(process.address, retry=False, timeout=30) as client:
        with pytest.raises(NotFound):
            client.get_context_set("torn")
        assert {s.name for s in client.list_context_sets()} == {"kept"}
        created = client.create_context_set("torn", DOCUMENTS)  # not ALREADY_EXISTS
        assert created.source_document_count == len(DOCUMENTS)
        stored = client.get_context_set("torn", include_embeddings=True)
        assert stored.dataset_embeddings is not None


# --- gateway SIGKILL in the middle of revision work (issue 15, "Data safety") -------------------
VARIANTS = [[f"variant {k} document {i} about topic {i % 5}" for i in range(16)] for k in range(4)]


def revision_upload(
    name: str, documents: list[str], activate: bool, hold: threading.Event
) -> Iterator[pb.CreateContextSetRequest]:
    """A replace=True upload that stops after its first documents until `hold` is set."""
    options = pb.ContextSetOptions(name=name, replace=True, activate=activate)
    yield pb.CreateContextSetRequest(options=options)
    yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=documents[:4]))
    hold.wait(60)
    yield pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=documents[4:]))


def assert_consistent(
    client: CdeClient, name: str, references: dict[frozenset[str], Matrix], kept: int
) -> list[int]:
    """The set has one active revision that exists, at most `kept` others, and every retained
    revision holds a whole variant whose embeddings equal that variant's reference; the
    retained revision numbers, ascending."""
    described = client.get_context_set(name)
    numbers = [r.revision for r in described.revisions]
    assert numbers == sorted(set(numbers)), numbers
    assert described.active_revision in numbers, (described.active_revision, numbers)
    assert described.revision == described.active_revision
    assert len(numbers) <= kept + 1, numbers
    served = client.embed_queries(QUERIES, context=name)
    assert served.context_revision == described.active_revision
    for number in numbers:
        stored = client.get_context_set(
            f"{name}@{number}", include_documents=True, include_embeddings=True
        )
        assert stored.documents is not None and stored.dataset_embeddings is not None
        documents = frozenset(stored.documents)
        assert documents in references, f"revision {number} holds a partial document set"
        assert stored.dataset_embeddings.shape[0] == stored.context_size == len(documents)
        pinned = client.embed_queries(QUERIES, context=f"{name}@{number}")
        assert pinned.context_revision == number
        np.testing.assert_allclose(pinned.embeddings, references[documents], atol=1e-6)
    np.testing.assert_allclose(
        served.embeddings,
        references[frozenset(client.get_context_set(name, include_documents=True).documents or ())],
        atol=1e-6,
    )
    return numbers


def variant_references(client: CdeClient) -> dict[frozenset[str], Matrix]:
    """Every variant's embeddings of QUERIES, from a set of its own ("ref-K")."""
    references = {}
    for index, documents in enumerate(VARIANTS):
        client.create_context_set(f"ref-{index}", documents)
        references[frozenset(documents)] = client.embed_queries(
            QUERIES, context=f"ref-{index}"
        ).embeddings
    return references


@pytest.mark.parametrize("activate", [True, False], ids=["activate", "inactive"])
def test_gateway_crash_during_a_revision_upload_keeps_the_served_revision(
    gateway_process_factory: GatewayProcessFactory, store_url: str, activate: bool
) -> None:
    process = gateway_process_factory(store=store_url)
    with CdeClient(process.address, retry=False, timeout=30) as client:
        references = variant_references(client)
        client.create_context_set("docs", VARIANTS[0])
        before = client.embed_queries(QUERIES, context="docs").embeddings
    hold = threading.Event()
    with grpc.insecure_channel(process.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        upload = revision_upload("docs", VARIANTS[1], activate, hold)
        create = stub.CreateContextSet.future(upload, timeout=60)
        crash_during(create, process, then=hold.set)  # the first documents are in the gateway
    process.start()
    with CdeClient(process.address, retry=False, timeout=30) as client:
        assert assert_consistent(client, "docs", references, kept=5) == [1]
        np.testing.assert_allclose(
            client.embed_queries(QUERIES, context="docs").embeddings, before, atol=1e-6
        )
        again = client.create_context_set("docs", VARIANTS[1], replace=True, activate=activate)
        assert again.revision > 1 and again.active_revision == (again.revision if activate else 1)
        assert_consistent(client, "docs", references, kept=5)


class RevisionChurn:
    """Two client threads on one set until the gateway dies: one creates revisions (replace,
    active or not, pruning to `kept`), the other activates retained ones."""

    def __init__(self, address: str, name: str, seed: int) -> None:
        self.address, self.name = address, name
        self.rng = np.random.default_rng(seed)
        self.acknowledged: list[int] = []  # revision numbers the gateway answered with
        self.unexpected: list[Exception] = []
        self.interrupted: list[str] = []  # the operations the kill cut off
        self._threads = [
            threading.Thread(target=self._run, args=(work,), daemon=True)
            for work in (self._create, self._activate)
        ]

    def __enter__(self) -> RevisionChurn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(30)

    def _run(self, work: Callable[[CdeClient], None]) -> None:
        with CdeClient(self.address, retry=False, timeout=30) as client:
            while True:
                try:
                    work(client)
                except Unavailable:  # the gateway was killed
                    self.interrupted.append(work.__name__.strip("_"))
                    return
                except NotFound:
                    continue  # activating a revision the other thread's create just pruned
                except Exception as exc:  # recorded: the test fails on it
                    self.unexpected.append(exc)
                    return

    def _create(self, client: CdeClient) -> None:
        documents = VARIANTS[int(self.rng.integers(len(VARIANTS)))]
        activate = bool(self.rng.integers(2))
        created = client.create_context_set(self.name, documents, replace=True, activate=activate)
        self.acknowledged.append(created.revision)

    def _activate(self, client: CdeClient) -> None:
        numbers = [r.revision for r in client.get_context_set(self.name).revisions]
        number = numbers[int(self.rng.integers(len(numbers)))]
        self.acknowledged.append(client.activate_context_set(self.name, number).active_revision)


def test_gateway_killed_at_random_points_of_revision_work_leaves_every_set_consistent(
    gateway_process_factory: GatewayProcessFactory, store_url: str
) -> None:
    kept = 2
    process = gateway_process_factory(store=store_url, context_revisions_kept=kept)
    with CdeClient(process.address, retry=False, timeout=30) as client:
        references = variant_references(client)
        client.create_context_set("docs", VARIANTS[0])
    rng = np.random.default_rng(15)
    highest, operations, interrupted = 1, 0, Counter[str]()
    for kill in range(6):
        with RevisionChurn(process.address, "docs", seed=kill) as churn:
            time.sleep(float(rng.uniform(0.3, 2.0)))
            process.kill()
        assert not churn.unexpected, churn.unexpected
        operations += len(churn.acknowledged)
        interrupted.update(churn.interrupted)
        highest = max([highest, *churn.acknowledged])
        process.start()
        with CdeClient(process.address, retry=False, timeout=30) as client:
            numbers = assert_consistent(client, "docs", references, kept)
        assert numbers[-1] >= highest, "an acknowledged revision was lost"
    assert operations > 6, "the churn did too little work between the kills"
    print(
        f"\n6 kills, {operations} acknowledged creates/activates, last revision {highest}; "
        f"calls cut off by the kills: {dict(interrupted)}"
    )


# --- Redis unavailable ----------------------------------------------------------------------------
def test_redis_outage_is_unavailable_and_recovers_intact(
    gateway_factory: GatewayFactory, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis = redis_server_factory()
    gateway = gateway_factory(store_url=redis.url, health_interval_s=0.5)
    with CdeClient(gateway.address, retry=False, timeout=30) as client:
        client.create_context_set("stored", DOCUMENTS)
        client.put_prompt("legal", "legal document: ")
        stored = client.get_context_set("stored", include_embeddings=True)
        before = client.embed_queries(QUERIES, context="stored").embeddings
        redis.stop()
        wait_for(lambda: health(gateway.address) == HealthStatus.NOT_SERVING, 10, "NOT_SERVING")
        calls: dict[str, Callable[[], object]] = {
            "Embed": lambda: client.embed_queries(QUERIES, context="stored"),
            "GetContextSet": lambda: client.get_context_set("stored"),
            "ListContextSets": lambda: list(client.list_context_sets()),
            "CreateContextSet": lambda: client.create_context_set("new", DOCUMENTS),
            "PutPrompt": lambda: client.put_prompt("other", "other: "),
            "ListPrompts": lambda: client.list_prompts(),
        }
        for rpc, call in calls.items():
            started = time.monotonic()
            with pytest.raises(Unavailable) as info:
                call()
            assert time.monotonic() - started < 5, f"{rpc} was slow to fail"
            assert "unavailable" in str(info.value).lower(), (rpc, str(info.value))
        redis.start()  # same port, same append-only file
        wait_for(lambda: health(gateway.address) == HealthStatus.SERVING, 15, "SERVING")
        again = client.get_context_set("stored", include_embeddings=True)
        assert again == stored
        assert again.dataset_embeddings is not None and stored.dataset_embeddings is not None
        np.testing.assert_array_equal(again.dataset_embeddings, stored.dataset_embeddings)
        assert {s.name for s in client.list_context_sets()} == {"stored"}  # no partial "new"
        assert "legal" in {p.name for p in client.list_prompts()}
        after = client.embed_queries(QUERIES, context="stored").embeddings
        np.testing.assert_allclose(after, before, atol=1e-6)
        client.create_context_set("new", DOCUMENTS)


# --- cancellation and deadlines -------------------------------------------------------------------
def test_cancelled_stream_stops_triton_calls(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(metrics_port=0)
    url = metrics_url(gateway)
    stop = threading.Event()

    def endless() -> Iterator[pb.EmbedStreamRequest]:
        i = 0
        while not stop.is_set():
            i += 1
            yield pb.EmbedStreamRequest(request=pb.EmbedRequest(texts=[f"endless {i}"] * 32))

    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        call = stub.EmbedStream(endless())
        for _, answer in zip(range(20), call, strict=False):
            assert answer.HasField("response")
        at_cancel = triton_calls(url)
        call.cancel()
        stop.set()
        time.sleep(1.0)
        settled = triton_calls(url)
        time.sleep(2.0)
        assert triton_calls(url) == settled, "the gateway kept calling Triton after the cancel"
        # at most the items in flight (8, two Triton calls each) finished after the cancel
        assert settled - at_cancel <= 2 * 8 + 2
        assert stub.Embed(pb.EmbedRequest(texts=["still fine"])).embeddings.rows == 1
    print(f"\nTriton calls: {at_cancel:.0f} at the cancel, {settled:.0f} after it (stable)")


def test_deadline_while_triton_is_busy_stops_the_call_everywhere(
    gateway_factory: GatewayFactory, triton_process: TritonProcess
) -> None:
    triton_grpc_url = triton_process.grpc_url
    gateway = gateway_factory(metrics_port=0, warm_up_default_context=False)
    url = metrics_url(gateway)
    stats_before = first_stage_stats(triton_grpc_url)
    blockers = BusyFirstStage(triton_process)
    with grpc.insecure_channel(gateway.address) as channel, blockers:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        deadline_s = 0.5
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateContextSet(create_request("late", DOCUMENTS), timeout=deadline_s)
        took = time.monotonic() - started
        assert info.value.code() == Code.DEADLINE_EXCEEDED
        time.sleep(0.5)
        settled = triton_calls(url)
    assert not blockers.errors
    assert triton_calls(url) == settled, "the gateway kept calling Triton after the deadline"
    stats: dict[str, int] = {}

    def blockers_counted() -> bool:
        # the python backend reports a batch's statistics just after sending its responses
        stats.update(
            {k: v - stats_before[k] for k, v in first_stage_stats(triton_grpc_url).items()}
        )
        return stats["success"] >= blockers.count

    wait_for(blockers_counted, 10.0, "the blockers in Triton's statistics")
    rows = blockers.count * BusyFirstStage.ROWS
    # Triton computed the blockers only: the expired request was dropped, never executed
    assert stats["rows"] == rows and stats["success"] == blockers.count, stats
    assert stats["fail"] >= 1 and stats["computed"] == blockers.count, stats
    assert took < deadline_s + 1.0
    print(f"\nDEADLINE_EXCEEDED after {took:.2f} s; Triton cde_first_stage: {stats}")
