"""Several Triton servers behind one client: least-outstanding choice, failover and rejoin.

`TritonPool` offers what the gateway uses (`embed`, `embed_context`, `model_info`, `ready`,
`close`) over one `TritonEndpoint` per endpoint. A call goes to the up endpoint with the fewest
calls in flight (ties: round robin). A call failing with UNAVAILABLE (connection refused or
reset, Triton stopping, model not ready) marks its endpoint down and is retried on another up
endpoint: all inference work is idempotent. A marked-down endpoint is probed once at once (a
blip, or a DNS name whose other addresses still answer, brings it straight back), and again by
`ready()`, which probes every endpoint (server ready and every needed model ready) and marks
each up or down; the health monitor calls it every CDE_HEALTH_INTERVAL_S, which is how a
restarted Triton rejoins. With no endpoint up, calls fail at once with UNAVAILABLE. Each Triton
fills its own context cache on demand (the cache-miss protocol).

One model at a time: a probe also reads each endpoint's model fingerprint, and an endpoint
serving another model than the pool's is kept down, so embeddings never mix two models. The
pool's model is the one most ready endpoints serve (ties: configuration order); it changes
only when no ready endpoint serves it any more, so a rolling update switches in one step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cde_server.errors import (
    DeadlineExceededError,
    InferenceBusyError,
    InferenceUnavailableError,
    ModelFailedError,
)
from cde_server.inference.interface import (
    ContextRef,
    Encoded,
    InferenceObserver,
    NullObserver,
    ServedModelInfo,
)
from cde_server.inference.triton_endpoint import TritonEndpoint, TritonTls

logger = logging.getLogger("cde_server.inference.pool")

T = TypeVar("T")


@dataclass
class _Member:
    url: str
    client: TritonEndpoint
    up: bool = True
    outstanding: int = 0
    failed_model: str | None = None
    """A model whose stub died here: repaired (reloaded) and probed by inference before the
    endpoint takes calls again."""


class TritonPool:
    """Spreads inference calls over Triton endpoints; fails over and lets them rejoin."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 60.0,
        embed_path: str = "direct",
        observer: InferenceObserver | None = None,
        tls: TritonTls | None = None,
        secret: str | None = None,
        tokenizer: str = "auto",
    ) -> None:
        """One endpoint per host:port in `urls` (distinct); all start marked up. `secret`: what
        restricted Tritons require; `tokenizer`: where the direct path tokenizes (see
        `TritonEndpoint`)."""
        if not urls or len(set(urls)) != len(urls):
            raise ValueError(f"need distinct Triton endpoints, got {list(urls)}")
        self._timeout_s = timeout_s
        self._observer: InferenceObserver = observer if observer is not None else NullObserver()
        self._endpoints = [
            _Member(
                url,
                TritonEndpoint(
                    url,
                    timeout_s=timeout_s,
                    embed_path=embed_path,
                    observer=self._observer,
                    tls=tls,
                    secret=secret,
                    tokenizer=tokenizer,
                ),
            )
            for url in urls
        ]
        self._next = 0
        self._fingerprint: str | None = None  # the model every up endpoint must serve
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Callable[[bool], None]] = []
        for endpoint in self._endpoints:
            self._observer.endpoint_up(endpoint.url, True)
            self._observer.endpoint_outstanding(endpoint.url, 0)

    @property
    def urls(self) -> list[str]:
        """Every endpoint, in configuration order."""
        return [endpoint.url for endpoint in self._endpoints]

    @property
    def up_urls(self) -> list[str]:
        """The endpoints that take requests now."""
        return [endpoint.url for endpoint in self._endpoints if endpoint.up]

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(any_up)` when the last endpoint goes down or the first comes up."""
        self._listeners.append(listener)

    def describe(self) -> str:
        """The endpoints and their state, for logs: "a:8001 (up), b:8001 (down)"."""
        return ", ".join(f"{e.url} ({'up' if e.up else 'down'})" for e in self._endpoints)

    async def close(self) -> None:
        """Stop probing and close every channel."""
        for probe in list(self._probes.values()):
            probe.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        await asyncio.gather(*(endpoint.client.close() for endpoint in self._endpoints))

    async def ready(self, timeout_s: float = 2.0) -> bool:
        """Probe every endpoint, mark each up or down; whether at least one is up."""
        served = await asyncio.gather(
            *(self._served_model(endpoint, timeout_s) for endpoint in self._endpoints)
        )
        fingerprints = [fingerprint for fingerprint in served if fingerprint is not None]
        if fingerprints and self._fingerprint not in fingerprints:
            self._pin(Counter(fingerprints).most_common(1)[0][0])
        for endpoint, fingerprint in zip(self._endpoints, served, strict=True):
            self._mark_serving(endpoint, fingerprint)
        return any(endpoint.up for endpoint in self._endpoints)

    async def _served_model(self, endpoint: _Member, timeout_s: float) -> str | None:
        """The fingerprint `endpoint` serves, or None when it is not ready (never raises).
        After a stub died there, the model is reloaded and every model must answer a real
        inference first."""
        try:
            if endpoint.failed_model is not None:
                await endpoint.client.reload_model(endpoint.failed_model)
                if not await endpoint.client.probe():
                    return None
                endpoint.failed_model = None
            if await endpoint.client.ready(timeout_s):
                return (await endpoint.client.model_info(timeout_s)).fingerprint
        except Exception as exc:  # a probe must not fail: the endpoint is just not ready
            logger.debug("probe of %s failed: %s", endpoint.url, exc)
        return None

    def _pin(self, fingerprint: str) -> None:
        if self._fingerprint is not None:
            logger.warning(
                "Triton endpoints now serve model %s (was %s)",
                fingerprint[:12],
                self._fingerprint[:12],
            )
        self._fingerprint = fingerprint

    def _mark_serving(self, endpoint: _Member, fingerprint: str | None) -> None:
        """Up when ready and serving the pool's model (pinning it if none is pinned yet)."""
        if fingerprint is None:
            self._mark(endpoint, False, "not ready")
            return
        if self._fingerprint is None:
            self._pin(fingerprint)
        same = fingerprint == self._fingerprint
        reason = f"serves model {fingerprint[:12]}, the pool serves {str(self._fingerprint)[:12]}"
        self._mark(endpoint, same, reason)

    async def model_info(self, timeout_s: float | None = None) -> ServedModelInfo:
        """The served model's information, from any up endpoint."""
        return await self._call(lambda endpoint, left: endpoint.model_info(left), timeout_s)

    async def embed(
        self,
        texts: Sequence[str],
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        """Second-stage embeddings (see `TritonEndpoint.embed`) on one up endpoint."""

        def work(endpoint: TritonEndpoint, left: float) -> Awaitable[Encoded]:
            return endpoint.embed(
                texts,
                context,
                max_tokens=max_tokens,
                allow_truncation=allow_truncation,
                timeout_s=left,
            )

        return await self._call(work, timeout_s)

    async def embed_tokens(
        self,
        rows: Sequence[Sequence[int]],
        prefix: str,
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        """Second-stage embeddings of token ids (see `TritonEndpoint.embed_tokens`)."""

        def work(endpoint: TritonEndpoint, left: float) -> Awaitable[Encoded]:
            return endpoint.embed_tokens(
                rows,
                prefix,
                context,
                max_tokens=max_tokens,
                allow_truncation=allow_truncation,
                timeout_s=left,
            )

        return await self._call(work, timeout_s)

    async def embed_context(
        self, documents: Sequence[str], *, timeout_s: float | None = None
    ) -> Encoded:
        """First-stage dataset embeddings (see `TritonEndpoint.embed_context`)."""
        return await self._call(
            lambda endpoint, left: endpoint.embed_context(documents, timeout_s=left), timeout_s
        )

    async def _call(
        self, work: Callable[[TritonEndpoint, float], Awaitable[T]], timeout_s: float | None
    ) -> T:
        """Run `work` on the best up endpoint; on UNAVAILABLE mark it down and try another; on a
        full queue try another (the endpoint stays up) and, if all are full, say so."""
        budget = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        deadline = time.monotonic() + budget
        tried: set[int] = set()
        failure: InferenceUnavailableError | None = None
        busy: InferenceBusyError | None = None
        while (index := self._choose(tried)) is not None:
            tried.add(index)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError("deadline exceeded while waiting for the model")
            endpoint = self._endpoints[index]
            endpoint.outstanding += 1
            self._observer.endpoint_outstanding(endpoint.url, endpoint.outstanding)
            result = "error"
            try:
                value = await work(endpoint.client, left)
                result = "ok"
                return value
            except InferenceBusyError as exc:
                result = "busy"
                busy = exc
            except InferenceUnavailableError as exc:
                result = "unavailable"
                failure = exc
                if isinstance(exc, ModelFailedError):
                    endpoint.failed_model = exc.model
                self._mark(endpoint, False, exc.message)
                self._probe_soon(endpoint)
            finally:
                endpoint.outstanding -= 1
                self._observer.endpoint_outstanding(endpoint.url, endpoint.outstanding)
                self._observer.endpoint_call(endpoint.url, result)
        if busy is not None:
            raise busy
        if failure is not None:
            raise failure
        raise InferenceUnavailableError(f"no inference server is available ({self.describe()})")

    def _choose(self, tried: set[int]) -> int | None:
        """The untried up endpoint with the fewest calls in flight; ties go round robin."""
        count = len(self._endpoints)
        best: int | None = None
        for step in range(count):
            index = (self._next + step) % count
            endpoint = self._endpoints[index]
            if not endpoint.up or index in tried:
                continue
            if best is None or endpoint.outstanding < self._endpoints[best].outstanding:
                best = index
        if best is not None:
            self._next = (best + 1) % count
        return best

    def _probe_soon(self, endpoint: _Member, timeout_s: float = 2.0) -> None:
        """Probe a marked-down endpoint in the background (one probe at a time)."""
        if endpoint.url in self._probes:
            return

        async def probe() -> None:
            try:
                self._mark_serving(endpoint, await self._served_model(endpoint, timeout_s))
            finally:
                del self._probes[endpoint.url]

        self._probes[endpoint.url] = asyncio.create_task(probe())

    def _mark(self, endpoint: _Member, up: bool, reason: str) -> None:
        if endpoint.up == up:
            return
        was_available = any(member.up for member in self._endpoints)
        endpoint.up = up
        available = any(member.up for member in self._endpoints)
        if available != was_available:
            for listener in self._listeners:
                listener(available)
        self._observer.endpoint_up(endpoint.url, up)
        if up:
            logger.info("Triton endpoint %s is up again", endpoint.url)
        else:
            logger.warning("Triton endpoint %s marked down: %s", endpoint.url, reason)
