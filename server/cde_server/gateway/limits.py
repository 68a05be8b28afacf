"""Per-tenant limits: a token bucket of calls per second and a cap on open streams.

Every RPC takes one token from its tenant's bucket (a stream counts once, when it opens);
an empty bucket is RESOURCE_EXHAUSTED with `retry_after` = the time until the next token.
The bucket is a few lines of arithmetic, kept here rather than pulling in a library whose
limiters wait instead of answering "when". 0 (or unset) means unlimited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cde_server.errors import ResourceExhaustedError
from cde_server.gateway.auth import Authenticator, TenantLimits
from cde_server.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Limits:
    """Effective limits of one tenant (0: unlimited)."""

    rate_rps: float = 0.0
    burst: int = 0
    max_streams: int = 0

    def with_overrides(self, overrides: TenantLimits | None) -> Limits:
        """These limits with a tenant's own values from the keys file."""
        if overrides is None:
            return self
        return Limits(
            rate_rps=_pick(overrides.rate_limit_rps, self.rate_rps),
            burst=int(_pick(overrides.rate_limit_burst, self.burst)),
            max_streams=int(_pick(overrides.max_streams, self.max_streams)),
        )


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class TenantLimiter:
    """Rate and stream limits per tenant; `limits_of(tenant)` gives each tenant's values."""

    limits_of: Callable[[str], Limits]
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _streams: dict[str, int] = field(default_factory=dict)

    def admit(self, tenant: str) -> None:
        """Count one call; `ResourceExhaustedError` (with retry_after) over the rate limit."""
        limits = self.limits_of(tenant)
        if limits.rate_rps <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(tenant)
        capacity = float(limits.burst or max(1, math.ceil(limits.rate_rps)))
        if bucket is None or bucket.rate != limits.rate_rps or bucket.capacity != capacity:
            bucket = TokenBucket(limits.rate_rps, capacity, capacity, now)
            self._buckets[tenant] = bucket
        wait = bucket.take(now)
        if wait > 0:
            raise ResourceExhaustedError(
                f"{_who(tenant)} is over the rate limit of {limits.rate_rps:g} calls/s "
                f"(burst {capacity:g}); retry in {wait:.2f} s",
                retry_after=wait,
            )

    def acquire_stream(self, tenant: str) -> None:
        """Take one of the tenant's stream slots (`release_stream` when the stream ends)."""
        limit = self.limits_of(tenant).max_streams
        open_now = self._streams.get(tenant, 0)
        if limit > 0 and open_now >= limit:
            raise ResourceExhaustedError(
                f"{_who(tenant)} has {open_now} streams open (its limit); retry later",
                retry_after=1.0,
            )
        self._streams[tenant] = open_now + 1

    def release_stream(self, tenant: str) -> None:
        """Give back a slot taken by `acquire_stream`."""
        self._streams[tenant] -= 1
        if not self._streams[tenant]:
            del self._streams[tenant]


def tenant_limiter(settings: GatewaySettings, authenticator: Authenticator) -> TenantLimiter:
    """The limiter of a gateway: CDE_ settings, overridden per tenant by the keys file. With
    authentication on, no tenant may hold more than a quarter of the stream slots by default,
    so that one tenant's idle streams cannot lock the others out."""
    max_streams = settings.max_streams_per_tenant
    if max_streams == 0 and authenticator.enabled:
        max_streams = max(1, settings.max_concurrent_streams // 4)
    base = Limits(
        rate_rps=settings.rate_limit_rps,
        burst=settings.rate_limit_burst,
        max_streams=max_streams,
    )
    return TenantLimiter(lambda tenant: base.with_overrides(authenticator.tenant_limits(tenant)))


def _who(tenant: str) -> str:
    return f'tenant "{tenant}"' if tenant else "this server"


@dataclass
class FailedAuthThrottle:
    """Refuses callers from an address that failed authentication `max_failures` times within
    `window_s`, for `block_s` (RESOURCE_EXHAUSTED with retry-after): guessing keys is slow."""

    max_failures: int = 30
    window_s: float = 10.0
    block_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)

    def check(self, peer: str) -> None:
        """RESOURCE_EXHAUSTED while `peer` is blocked."""
        until = self._blocked_until.get(address_of(peer))
        if until is None:
            return
        left = until - self.clock()
        if left <= 0:
            del self._blocked_until[address_of(peer)]
            return
        raise ResourceExhaustedError(
            f"too many failed authentications from this address; retry in {left:.1f} s",
            retry_after=left,
        )

    def failed(self, peer: str) -> None:
        """Record one failed authentication of `peer`."""
        address, now = address_of(peer), self.clock()
        recent = [t for t in self._failures.get(address, []) if now - t < self.window_s]
        recent.append(now)
        if len(recent) >= self.max_failures:
            self._blocked_until[address] = now + self.block_s
            recent = []
        self._failures[address] = recent
        if len(self._failures) > 10_000:  # bounded memory under a spread-out attack
            self._failures = {a: f for a, f in self._failures.items() if f}


def address_of(peer: str) -> str:
    """The address of a gRPC peer string ("ipv4:1.2.3.4:5678" → "ipv4:1.2.3.4")."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
