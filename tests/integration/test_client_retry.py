"""Idempotent calls survive a gateway restart: the client retries UNAVAILABLE with backoff."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cde_client import AsyncCdeClient, CdeClient, CdeError, EmbedResult, RetryPolicy
from support.client_fixtures import run_async

if TYPE_CHECKING:
    import random

    from support.gateway_fixtures import GatewayFactory, GatewayThread

DOCUMENTS = [f"document {i} on topic {i % 5}" for i in range(20)]
QUERIES = ["first query", "second query"]
DOWNTIME_S = 1.0
CALLS_AFTER_RESTART = 3


@dataclass(frozen=True)
class CountingPolicy(RetryPolicy):
    """A retry policy that records each wait it decides on."""

    waits: list[float] = field(default_factory=list)

    def delay_before_retry(
        self,
        error: CdeError,
        attempt: int,
        *,
        idempotent: bool,
        time_left: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        delay = super().delay_before_retry(
            error, attempt, idempotent=idempotent, time_left=time_left, rng=rng
        )
        if delay is not None:
            self.waits.append(delay)
        return delay


def policy() -> CountingPolicy:
    return CountingPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.5)


class Bounce:
    """Stops the gateway, waits DOWNTIME_S, starts it again on the same port and store."""

    def __init__(self, gateway: GatewayThread) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._gateway = gateway
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=120)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._gateway.stop(grace_s=10.0)  # in-flight calls finish; new ones are refused
            time.sleep(DOWNTIME_S)
            self._gateway.start()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def assert_same(results: list[EmbedResult], expected: EmbedResult) -> None:
    assert results
    for result in results:
        np.testing.assert_allclose(result.embeddings, expected.embeddings, atol=1e-5)
        assert result.context_revision == expected.context_revision


def test_sync_client_retries_across_a_gateway_restart(
    gateway_factory: GatewayFactory, unique: str
) -> None:
    gateway = gateway_factory()
    retry = policy()
    with CdeClient(gateway.address, retry=retry) as client:
        client.create_context_set(unique, DOCUMENTS)
        expected = client.embed(QUERIES, context=unique)
        bounce = Bounce(gateway)
        bounce.start()
        results, after_restart = [], 0
        deadline = time.monotonic() + 90
        while after_restart < CALLS_AFTER_RESTART and time.monotonic() < deadline:
            after_restart += bounce.done.is_set()
            results.append(client.embed(QUERIES, context=unique))
            assert client.get_context_set(unique).revision == 1
        bounce.join()
    assert after_restart == CALLS_AFTER_RESTART
    assert retry.waits, "the restart went unnoticed: no call was retried"
    assert_same(results, expected)


def test_async_client_retries_across_a_gateway_restart(
    gateway_factory: GatewayFactory, unique: str
) -> None:
    gateway = gateway_factory()
    retry = policy()

    async def scenario() -> tuple[list[EmbedResult], EmbedResult]:
        async with AsyncCdeClient(gateway.address, retry=retry) as client:
            await client.create_context_set(unique, DOCUMENTS)
            expected = await client.embed(QUERIES, context=unique)
            bounce = Bounce(gateway)
            bounce.start()
            results, after_restart = [], 0
            deadline = time.monotonic() + 90
            while after_restart < CALLS_AFTER_RESTART and time.monotonic() < deadline:
                after_restart += bounce.done.is_set()
                results.append(await client.embed(QUERIES, context=unique))
                await asyncio.sleep(0)
            await asyncio.to_thread(bounce.join)
            assert after_restart == CALLS_AFTER_RESTART
            return results, expected

    results, expected = run_async(scenario())
    assert retry.waits, "the restart went unnoticed: no call was retried"
    assert_same(results, expected)


def test_retry_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    from cde_client import Unavailable

    gateway = gateway_factory()
    with CdeClient(gateway.address, retry=False) as client:
        client.model_info()
        gateway.stop()
        started = time.monotonic()
        try:
            client.list_prompts()
        except Unavailable:
            pass
        else:
            raise AssertionError("a stopped gateway answered")
        assert time.monotonic() - started < 5
