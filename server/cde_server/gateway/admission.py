"""Admission control: a bounded amount of embedding work in flight, shared fairly by tenants.

Work is counted in texts (or context documents). At most `capacity` are with Triton at once;
calls beyond it wait in their tenant's queue, and freed capacity goes to the tenants' queues in
turn (round robin), so one tenant's flood delays another tenant's small call by the work
already in flight, not by the flood. A call waits at most until its own deadline. When its
tenant's queue already holds `max_queued` texts, a call is refused at once with
RESOURCE_EXHAUSTED and a retry hint (another tenant's calls still queue). Hand-written: it is a
few lines of bookkeeping over asyncio futures, and the limiter libraries at hand neither count
work in texts nor share by tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cde_server.errors import DeadlineExceededError, ResourceExhaustedError


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass
class _Waiter:
    texts: int
    ready: asyncio.Future[None] = field(default_factory=_future)


class FairAdmission:
    """Texts in flight at most `capacity` (a larger call runs alone); fair queues behind it,
    each of at most `max_queued` texts."""

    def __init__(
        self, capacity: int, max_queued: int, on_refused: Callable[[], None] | None = None
    ) -> None:
        """`on_refused` is called for every call refused (for the metrics)."""
        self.capacity = capacity
        self.max_queued = max_queued
        self._on_refused = on_refused
        self.in_flight = 0
        self.queued = 0
        self._queued_by_tenant: dict[str, int] = {}
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()

    @contextlib.asynccontextmanager
    async def admit(
        self, tenant: str, texts: int, deadline: float | None = None
    ) -> AsyncIterator[None]:
        """Hold `texts` of capacity for the block; wait (at most until the monotonic
        `deadline`) or refuse as the module docstring says."""
        await self._acquire(tenant, texts, deadline)
        try:
            yield
        finally:
            self.in_flight -= texts
            self._dispatch()

    async def _acquire(self, tenant: str, texts: int, deadline: float | None) -> None:
        if not self._queues and self._fits(texts):
            self.in_flight += texts
            return
        tenant_queued = self._queued_by_tenant.get(tenant, 0)
        if tenant_queued + texts > self.max_queued:
            if self._on_refused is not None:
                self._on_refused()
            raise ResourceExhaustedError(
                f"the server is at capacity ({self.in_flight} texts in flight, {tenant_queued} "
                "of yours queued); retry shortly",
                retry_after=1.0,
            )
        waiter = _Waiter(texts)
        self._queues.setdefault(tenant, deque()).append(waiter)
        self._count_queued(tenant, texts)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.ready), timeout)
        except TimeoutError:
            if waiter.ready.done():  # admitted just as the deadline passed: give it back
                self.in_flight -= texts
                self._dispatch()
            else:
                self._withdraw(tenant, waiter)
            raise DeadlineExceededError(
                "the deadline passed while the call waited for capacity"
            ) from None
        except asyncio.CancelledError:
            if waiter.ready.done():
                self.in_flight -= texts
                self._dispatch()
            else:
                self._withdraw(tenant, waiter)
            raise

    def _count_queued(self, tenant: str, texts: int) -> None:
        self.queued += texts
        left = self._queued_by_tenant.get(tenant, 0) + texts
        if left:
            self._queued_by_tenant[tenant] = left
        else:
            self._queued_by_tenant.pop(tenant, None)

    def _fits(self, texts: int) -> bool:
        return self.in_flight == 0 or self.in_flight + texts <= self.capacity

    def _withdraw(self, tenant: str, waiter: _Waiter) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._count_queued(tenant, -waiter.texts)
            if not queue:
                del self._queues[tenant]

    def _dispatch(self) -> None:
        """Admit queued calls tenant by tenant while they fit."""
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            waiter = queue[0]
            if not self._fits(waiter.texts):
                return
            queue.popleft()
            self._count_queued(tenant, -waiter.texts)
            self.in_flight += waiter.texts
            waiter.ready.set_result(None)
            del self._queues[tenant]
            if queue:  # this tenant goes to the back of the line
                self._queues[tenant] = queue
