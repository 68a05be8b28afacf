"""grpc.health.v1 status of the gateway: SERVING while the store and at least one Triton
endpoint are reachable.

A background task re-checks both every `interval_s` seconds: it probes every Triton endpoint
(so a down one rejoins the pool) and re-reads the served model's information (so a Triton
restarted with another model is noticed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from cde_server.errors import ServiceError
from cde_server.gateway.metrics import GatewayMetrics
from cde_server.inference.interface import Inference
from cde_server.inference.served_model import ServedModel
from cde_server.stores.base import Store

logger = logging.getLogger("cde_server.gateway.health")
_CHECK_TIMEOUT_S = 3.0


class HealthMonitor:
    """Keeps a HealthServicer's statuses in line with Triton's and the store's reachability."""

    def __init__(
        self,
        *,
        inference: Inference,
        store: Store,
        model: ServedModel,
        metrics: GatewayMetrics,
        services: Sequence[str],
        interval_s: float,
    ) -> None:
        """`services`: names whose status is tracked ("" = the whole server)."""
        self.servicer = HealthServicer()
        self._inference = inference
        self._store = store
        self._model = model
        self._metrics = metrics
        self._services = ("", *services)
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._publishing: set[asyncio.Task[None]] = set()
        self.serving = False

    async def start(self) -> None:
        """Check once now, then keep checking in the background."""
        await self._publish(await self.check())
        self._inference.on_availability(self._availability_changed)
        self._task = asyncio.create_task(self._run())

    def _availability_changed(self, available: bool) -> None:
        """No Triton endpoint up: NOT_SERVING at once; one back: check now, not at the
        next interval."""
        if available:
            self._wake.set()
        elif self.serving:
            logger.warning("NOT_SERVING: no Triton endpoint is up (%s)", self._inference.describe())
            task = asyncio.get_running_loop().create_task(self._publish(False))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def stop(self) -> None:
        """Report NOT_SERVING to everyone and stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.servicer.enter_graceful_shutdown()

    async def check(self) -> bool:
        """Whether one Triton (all models ready, model info readable) and the store answer now."""
        problems: list[str] = []
        try:
            await asyncio.wait_for(self._store.ping(), _CHECK_TIMEOUT_S)
        except (ServiceError, TimeoutError) as exc:
            problems.append(f"store: {exc or 'no answer'}")
        if not await self._inference.ready(_CHECK_TIMEOUT_S):
            problems.append(f"no Triton endpoint is ready ({self._inference.describe()})")
        else:
            try:  # a busy Triton may answer slowly: known model information is good enough
                await asyncio.wait_for(self._model.refresh(), _CHECK_TIMEOUT_S)
            except (ServiceError, TimeoutError) as exc:
                if self._model.cached_info is None:
                    problems.append(f"Triton: {exc or 'no answer'}")
        if problems and self.serving:
            logger.warning("NOT_SERVING: %s", "; ".join(problems))
        elif not problems and not self.serving:
            logger.info("SERVING")
        return not problems

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                await self._publish(await self.check())
            except Exception as exc:  # never let the monitor die
                logger.error("health check failed: %s", exc, exc_info=exc)

    async def _publish(self, serving: bool) -> None:
        self.serving = serving
        self._metrics.healthy.set(1 if serving else 0)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self.servicer.set(service, status)
