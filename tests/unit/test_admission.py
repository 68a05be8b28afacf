"""FairAdmission: bounded work in flight, tenants served in turn, refusal and deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest
from cde_server.errors import DeadlineExceededError, ResourceExhaustedError
from cde_server.gateway.admission import FairAdmission


def test_a_flood_does_not_starve_another_tenant() -> None:
    async def scenario() -> list[str]:
        admission = FairAdmission(capacity=2, max_queued=100)
        order: list[str] = []
        release = asyncio.Event()

        async def call(tenant: str, name: str) -> None:
            async with admission.admit(tenant, 2):
                order.append(name)
                await release.wait()

        flood = [asyncio.create_task(call("a", f"a{i}")) for i in range(5)]
        await asyncio.sleep(0)
        small = asyncio.create_task(call("b", "b0"))
        await asyncio.sleep(0)
        for _ in range(6):  # let one call finish at a time
            release.set()
            await asyncio.sleep(0)
            release.clear()
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*flood, small)
        return order

    order = asyncio.run(scenario())
    # b waits for the call in flight and one more of a's at most, not for the whole flood
    assert order.index("b0") <= 2, order


def test_over_the_queue_bound_calls_are_refused_at_once_with_a_hint() -> None:
    async def scenario() -> None:
        admission = FairAdmission(capacity=4, max_queued=4)
        async with admission.admit("a", 4):
            waiting = asyncio.create_task(admission.admit("a", 4).__aenter__())
            await asyncio.sleep(0)
            started = time.monotonic()
            with pytest.raises(ResourceExhaustedError) as refused:
                async with admission.admit("a", 1):
                    pass
            assert time.monotonic() - started < 0.1
            assert refused.value.retry_after is not None
            other = asyncio.create_task(admission.admit("b", 1).__aenter__())
            await asyncio.sleep(0)
            assert admission.queued == 5  # another tenant still queues
            other.cancel()
            await asyncio.gather(other, return_exceptions=True)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        assert admission.in_flight == 0 and admission.queued == 0

    asyncio.run(scenario())


def test_a_call_waits_no_longer_than_its_deadline() -> None:
    async def scenario() -> None:
        admission = FairAdmission(capacity=1, max_queued=10)
        async with admission.admit("a", 1):
            with pytest.raises(DeadlineExceededError):
                async with admission.admit("b", 1, deadline=time.monotonic() + 0.05):
                    pass
        assert admission.queued == 0
        async with admission.admit("b", 1):  # capacity came back
            assert admission.in_flight == 1

    asyncio.run(scenario())


def test_a_call_larger_than_the_capacity_runs_alone() -> None:
    async def scenario() -> None:
        admission = FairAdmission(capacity=2, max_queued=10)
        async with admission.admit("a", 50):
            assert admission.in_flight == 50

    asyncio.run(scenario())


def test_an_address_that_keeps_failing_authentication_is_blocked_for_a_while() -> None:
    from cde_server.gateway.limits import FailedAuthThrottle

    now = [0.0]
    throttle = FailedAuthThrottle(max_failures=3, window_s=10, block_s=5, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("ipv4:10.0.0.1:4000")
        throttle.failed("ipv4:10.0.0.1:4000")
    with pytest.raises(ResourceExhaustedError) as blocked:
        throttle.check("ipv4:10.0.0.1:5000")  # another port of the same address
    assert blocked.value.retry_after == 5
    throttle.check("ipv4:10.0.0.2:4000")  # other addresses are not affected
    now[0] = 6.0
    throttle.check("ipv4:10.0.0.1:4000")
