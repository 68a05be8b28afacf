"""TritonPool against the session's Triton: choice of endpoint, mark-down with retry, fail fast.

Two endpoints reach the same server ("127.0.0.1:port" and "localhost:port"), so the choice is
observable without a second Triton; a free port stands for a dead server. A second Triton
serving another model shows that one pool never mixes two models. Rejoining after a restart
is proved with two real servers in test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from cde_model.random_checkpoint import write_random_checkpoint
from cde_server.errors import InferenceUnavailableError
from cde_server.inference.pool import TritonPool
from cde_server.triton.launcher import TritonProcess
from support.store_fixtures import free_port
from support.triton_fixtures import tiny_triton_settings


class Observer:
    """Records what the pool reports per endpoint."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.up: dict[str, bool] = {}
        self.most_outstanding: Counter[str] = Counter()

    def triton_call(self, model: str, seconds: float, code: str) -> None:
        pass

    def context_cache(self, hit: bool) -> None:
        pass

    def endpoint_up(self, endpoint: str, up: bool) -> None:
        self.up[endpoint] = up

    def endpoint_outstanding(self, endpoint: str, count: int) -> None:
        self.most_outstanding[endpoint] = max(self.most_outstanding[endpoint], count)

    def endpoint_call(self, endpoint: str, result: str) -> None:
        self.calls[endpoint, result] += 1


def two_names(triton_grpc_url: str) -> list[str]:
    """Two distinct endpoint strings for the session's Triton."""
    port = triton_grpc_url.rsplit(":", 1)[1]
    return [f"127.0.0.1:{port}", f"localhost:{port}"]


def test_round_robin_and_least_outstanding(triton_grpc_url: str) -> None:
    first, second = two_names(triton_grpc_url)

    async def scenario() -> None:
        observer = Observer()
        pool = TritonPool([first, second], observer=observer)
        try:
            for _ in range(4):  # idle endpoints tie: strict alternation
                await pool.model_info()
            assert observer.calls[first, "ok"] == 2 and observer.calls[second, "ok"] == 2
            await asyncio.gather(*(pool.model_info() for _ in range(10)))  # 5 in flight each
            assert observer.calls[first, "ok"] == 7 and observer.calls[second, "ok"] == 7
            assert observer.most_outstanding == {first: 5, second: 5}

            # a long call keeps `first` busy: the next calls all go to `second`
            documents = [f"search_document: long document {i} " + "word " * 200 for i in range(256)]
            busy = asyncio.create_task(pool.embed_context(documents))
            await asyncio.sleep(0)
            for _ in range(3):
                await pool.model_info()
            assert not busy.done(), "the long call ended too soon to show the choice"
            assert observer.calls[second, "ok"] == 10 and observer.calls[first, "ok"] == 7
            await busy
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_unavailable_endpoint_is_marked_down_and_the_call_retried(triton_grpc_url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        observer = Observer()
        pool = TritonPool([dead, triton_grpc_url], observer=observer, timeout_s=5.0)
        try:
            info = await pool.model_info()  # tries `dead` first (round robin), then retries
            assert info.hidden_size == 64
            assert observer.calls[dead, "unavailable"] == 1
            assert observer.calls[triton_grpc_url, "ok"] == 1
            assert observer.up == {dead: False, triton_grpc_url: True}
            assert pool.up_urls == [triton_grpc_url]
            assert pool.describe() == f"{dead} (down), {triton_grpc_url} (up)"
            for _ in range(3):  # a down endpoint gets no calls
                await pool.model_info()
            assert observer.calls[dead, "unavailable"] == 1
            assert await pool.ready(1.0)  # the probe keeps it down: nothing answers there
            assert pool.up_urls == [triton_grpc_url]
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_no_endpoint_up_fails_fast() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    async def scenario() -> None:
        pool = TritonPool(dead, timeout_s=30.0)
        try:
            with pytest.raises(InferenceUnavailableError, match="inference server unavailable"):
                await pool.model_info()  # both tried, both marked down
            assert pool.up_urls == []
            started = time.monotonic()
            with pytest.raises(InferenceUnavailableError, match="no inference server is available"):
                await pool.embed_context(["a document"])
            assert time.monotonic() - started < 0.1
            assert not await pool.ready(1.0)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_endpoints_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        TritonPool(["a:1", "a:1"])
    with pytest.raises(ValueError, match="distinct"):
        TritonPool([])


@pytest.fixture(scope="module")
def other_model_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Triton serving another model (a random tiny checkpoint); its gRPC address."""
    folder = tmp_path_factory.mktemp("other-model")
    checkpoint = write_random_checkpoint(folder / "checkpoint", "tiny", seed=5)
    settings = tiny_triton_settings(folder / "cache", model=str(checkpoint))
    with TritonProcess(settings, log=lambda _line: None) as process:
        yield process.grpc_url


def test_endpoints_serving_another_model_are_kept_down(
    triton_grpc_url: str, other_model_triton: str
) -> None:
    async def scenario(urls: list[str]) -> tuple[list[str], str]:
        pool = TritonPool(urls, timeout_s=10.0)
        try:
            assert await pool.ready(5.0)
            fingerprints = {(await pool.model_info()).fingerprint for _ in range(4)}
            assert len(fingerprints) == 1, "calls must never reach the other model"
            return pool.up_urls, fingerprints.pop()
        finally:
            await pool.close()

    # a tie goes to configuration order; the other endpoint is down, whatever it serves
    up, first = asyncio.run(scenario([triton_grpc_url, other_model_triton]))
    assert up == [triton_grpc_url]
    up, second = asyncio.run(scenario([other_model_triton, triton_grpc_url]))
    assert up == [other_model_triton] and second != first
    # the majority wins: two names of the session's server against the other model
    up, majority = asyncio.run(scenario([other_model_triton, *two_names(triton_grpc_url)]))
    assert up == two_names(triton_grpc_url) and majority == first
