"""Scale-out, end to end: two `cde serve` gateways on one Redis store, two Tritons behind both.

One Triton is the session's; the other (the "spare") is killed with SIGKILL while client
threads embed through both gateways, then restarted on the same ports. Proves: sets and
prompts written through one gateway are usable through the other at once and deletes are
seen everywhere; concurrent creates of one name have exactly one winner; no request fails
while a Triton dies (the gateways retry on the other one); the restarted Triton rejoins and
serves again; a replace is atomic for readers on both gateways; every embedding equals the
reference whichever gateway and Triton served it. Revisions (issue 15), on Redis and on one
SQLite file: built through one gateway, pinned and activated through the other; concurrent
creates through both get distinct numbers; concurrent activates leave one winner.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cde_client import AlreadyExists, CdeClient, CdeError, ContextSet, NotFound, Unavailable
from cde_server.triton.launcher import TritonProcess
from support.process_fixtures import GatewayProcess, GatewayProcessFactory
from support.store_fixtures import RedisServer, free_port, unique_prefix
from support.triton_fixtures import tiny_triton_settings

TEXTS = ["who wrote hamlet", "the tiny model embeds this"]
FIRST_DOCS = [f"first corpus document {i} about plays" for i in range(24)]
SECOND_DOCS = [f"second corpus document {i} about rivers" for i in range(24)]
WAIT_S = 60.0

Matrix = npt.NDArray[np.float32]


def metric(url: str, prefix: str) -> float:
    """Sum of the samples whose line starts with `prefix` on a Prometheus endpoint (0 if none,
    or if the endpoint does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def served_by(triton: TritonProcess) -> float:
    """Second-stage requests this Triton process has served."""
    return metric(triton.metrics_url, 'nv_inference_request_success{model="cde_second_stage"')


def create_at_once(calls: list[tuple[CdeClient, list[str]]], name: str) -> list[object]:
    """Create context set `name` through every client at the same moment; each outcome."""
    barrier = threading.Barrier(len(calls))

    def create(call: tuple[CdeClient, list[str]]) -> object:
        client, documents = call
        barrier.wait()
        try:
            return client.create_context_set(name, documents)
        except CdeError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(create, calls))


@dataclass
class Load:
    """Client threads embedding TEXTS under context set "shared" through every gateway."""

    addresses: list[str]
    results: list[tuple[int, Matrix]] = field(default_factory=list)
    failures: list[tuple[str, CdeError]] = field(default_factory=list)
    phase: str = "failover"
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, per_gateway: int = 2) -> None:
        for address in self.addresses * per_gateway:
            thread = threading.Thread(target=self._run, args=(address,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, address: str) -> None:
        with CdeClient(address, retry=False, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    result = client.embed(TEXTS, context="shared")
                except CdeError as exc:  # every failure is recorded, none is retried
                    self.failures.append((self.phase, exc))
                    continue
                self.results.append((result.context_revision, result.embeddings.copy()))

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)


@pytest.fixture
def spare_settings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spare-triton-cache")


@pytest.fixture
def spare(spare_settings: Path) -> Iterator[list[TritonProcess]]:
    """The killable second Triton (a list: the test replaces it by its restarted self)."""
    processes = [TritonProcess(tiny_triton_settings(spare_settings))]
    processes[0].start()
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_two_gateways_two_tritons(
    redis_server: RedisServer,
    triton_process: TritonProcess,
    spare: list[TritonProcess],
    gateway_process_factory: GatewayProcessFactory,
) -> None:
    store = f"{redis_server.url}?prefix={unique_prefix()}"
    endpoints = f"{triton_process.grpc_url},{spare[0].grpc_url}"
    metrics_port = free_port()
    gateway_a: GatewayProcess = gateway_process_factory(
        triton_url=endpoints, store=store, metrics_port=metrics_port
    )
    gateway_b: GatewayProcess = gateway_process_factory(triton_url=endpoints, store=store)
    endpoint_up = (
        f"http://127.0.0.1:{metrics_port}/metrics",
        f'cde_gateway_triton_endpoint_up{{endpoint="{spare[0].grpc_url}"}}',
    )

    with (
        CdeClient(gateway_a.address, retry=False) as a,
        CdeClient(gateway_b.address, retry=False) as b,
    ):
        # --- what one gateway writes, the other uses at once; deletes are seen everywhere ----
        a.create_context_set("shared", FIRST_DOCS)
        first = b.embed(TEXTS, context="shared")
        np.testing.assert_allclose(
            a.embed(TEXTS, context="shared").embeddings, first.embeddings, atol=1e-5
        )
        a.put_prompt("scaled", "scaled out: ")
        assert b.embed(TEXTS, prompt="scaled", context="shared").embeddings.shape == (2, 64)
        b.delete_prompt("scaled")
        with pytest.raises(NotFound):
            a.embed(TEXTS, prompt="scaled")
        b.create_context_set("doomed", FIRST_DOCS)
        assert a.get_context_set("doomed").context_id == b.get_context_set("doomed").context_id
        b.delete_context_set("doomed")
        with pytest.raises(NotFound):
            a.get_context_set("doomed")
        with pytest.raises(NotFound):
            a.embed(TEXTS, context="doomed")

        # --- two gateways create one name at the same moment: exactly one wins ----------------
        for round_ in range(3):
            name = f"race-{round_}"
            outcomes = create_at_once([(a, FIRST_DOCS), (b, SECOND_DOCS)], name)
            winners = [o for o in outcomes if isinstance(o, ContextSet)]
            losers = [o for o in outcomes if isinstance(o, AlreadyExists)]
            assert len(winners) == 1 and len(losers) == 1, outcomes
            assert a.get_context_set(name).context_id == winners[0].context_id
            assert b.get_context_set(name).context_id == winners[0].context_id

    # --- a Triton dies under load: no request fails; restarted, it rejoins ---------------------
    load = Load([gateway_a.address, gateway_b.address])
    load.start()
    try:
        wait_for(lambda: served_by(spare[0]) > 0, "the spare Triton to take a share of the load")
        os.killpg(spare[0].pid or 0, signal.SIGKILL)
        spare[0].stop()
        wait_for(lambda: metric(*endpoint_up) == 0.0, "gateway A to mark the dead Triton down")
        served = len(load.results)
        wait_for(lambda: len(load.results) > served + 20, "requests served by the survivor")

        spare.append(TritonProcess(spare[0].settings))  # same ports
        spare[1].start()
        wait_for(lambda: metric(*endpoint_up) == 1.0, "gateway A to bring the Triton back")
        wait_for(lambda: served_by(spare[1]) > 0, "the restarted Triton to serve requests")
        assert not load.failures, load.failures[:3]

        # --- a replace through B while both gateways read the set: old or new, never mixed ----
        load.phase = "replace"
        with CdeClient(gateway_b.address) as b:
            replaced = b.create_context_set("shared", SECOND_DOCS, replace=True)
        served = len(load.results)
        wait_for(lambda: len(load.results) > served + 20, "requests after the replace")
    finally:
        load.finish()

    # A request that read the old set and then missed Triton's cache may be told to retry.
    assert all(
        phase == "replace" and isinstance(exc, Unavailable) and "replaced" in str(exc)
        for phase, exc in load.failures
    ), load.failures[:3]
    with CdeClient(gateway_a.address) as a:
        second = a.embed(TEXTS, context="shared")
    assert second.context_revision == replaced.revision != first.context_revision
    references = {
        first.context_revision: first.embeddings,
        second.context_revision: second.embeddings,
    }
    assert not np.allclose(first.embeddings, second.embeddings, atol=1e-3)
    revisions = {revision for revision, _ in load.results}
    assert revisions == set(references), revisions
    for revision, embeddings in load.results:
        np.testing.assert_allclose(embeddings, references[revision], atol=1e-5)


# --- revisions across gateways ---------------------------------------------------------------
def at_once(calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run every call at the same moment (one thread each); each outcome or CdeError."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> object:
        barrier.wait()
        try:
            return call()
        except CdeError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_revisions_built_on_one_gateway_are_pinned_and_activated_on_another(
    store_url: str, gateway_process_factory: GatewayProcessFactory
) -> None:
    """Both gateways on one store: a Redis prefix, or one SQLite file."""
    kept = 20
    gateway_a = gateway_process_factory(store=store_url, context_revisions_kept=kept)
    gateway_b = gateway_process_factory(store=store_url, context_revisions_kept=kept)
    with (
        CdeClient(gateway_a.address, retry=False, timeout=60) as a,
        CdeClient(gateway_b.address, retry=False, timeout=60) as b,
    ):
        # --- build beside through A; pin and activate through B --------------------------------
        a.create_context_set("docs", FIRST_DOCS)
        old = a.embed(TEXTS, context="docs")
        built = a.create_context_set("docs", SECOND_DOCS, replace=True, activate=False)
        assert (built.revision, built.active_revision) == (2, 1)
        served = b.embed(TEXTS, context="docs")  # the inactive build changed nothing
        assert served.context_revision == 1
        np.testing.assert_allclose(served.embeddings, old.embeddings, atol=1e-6)
        pinned = b.embed(TEXTS, context="docs@2")
        assert pinned.context_revision == 2
        assert not np.allclose(pinned.embeddings, old.embeddings, atol=1e-3)
        np.testing.assert_allclose(
            a.embed(TEXTS, context="docs@2").embeddings, pinned.embeddings, atol=1e-6
        )
        assert b.activate_context_set("docs", 2).active_revision == 2
        for client in (a, b):
            now = client.embed(TEXTS, context="docs")
            assert now.context_revision == 2
            np.testing.assert_allclose(now.embeddings, pinned.embeddings, atol=1e-6)
        a.activate_context_set("docs", 1)
        back = b.embed(TEXTS, context="docs")
        assert back.context_revision == 1
        np.testing.assert_allclose(back.embeddings, old.embeddings, atol=1e-6)

        # --- both gateways create revisions of one set at once: distinct numbers ---------------
        creates: list[Callable[[], object]] = [
            partial(client.create_context_set, "docs", docs, replace=True, activate=False)
            for client, docs in [(a, FIRST_DOCS), (b, SECOND_DOCS)] * 3
        ]
        outcomes = at_once(creates)
        created = [o for o in outcomes if isinstance(o, ContextSet)]
        assert len(created) == len(creates), outcomes
        numbers = sorted(c.revision for c in created)
        assert numbers == list(range(3, 3 + len(creates))), numbers
        for client in (a, b):
            described = client.get_context_set("docs")
            assert described.active_revision == 1
            assert [r.revision for r in described.revisions] == [1, 2, *numbers]
        for index, c in enumerate(created):  # each number holds what its own call sent
            stored = b.get_context_set(f"docs@{c.revision}", include_documents=True)
            assert stored.context_id == c.context_id and stored.documents is not None
            assert set(stored.documents) <= set(FIRST_DOCS if index % 2 == 0 else SECOND_DOCS)

        # --- activates race through both gateways: one winner, seen alike by both --------------
        references = {n: a.embed(TEXTS, context=f"docs@{n}").embeddings for n in (1, 2, *numbers)}
        for round_ in range(4):
            wanted = [numbers[round_], numbers[-1 - round_], 1, 2]
            activates: list[Callable[[], object]] = [
                partial(client.activate_context_set, "docs", n)
                for client, n in zip([a, b, a, b], wanted, strict=True)
            ]
            outcomes = at_once(activates)
            assert all(isinstance(o, ContextSet) for o in outcomes), outcomes
            winner = a.get_context_set("docs").active_revision
            assert winner in wanted
            assert b.get_context_set("docs").active_revision == winner
            for client in (a, b):
                result = client.embed(TEXTS, context="docs")
                assert result.context_revision == winner
                np.testing.assert_allclose(result.embeddings, references[winner], atol=1e-6)
