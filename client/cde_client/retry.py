"""When and how long to wait before retrying a failed call (exponential backoff + jitter).

Only idempotent calls are retried (a repeated Embed, Get or PutPrompt is harmless, and so is
a repeated CreateContextSet, which carries its call's idempotency key; a repeated delete is
not), and only on the configured status codes: by default UNAVAILABLE
(the gateway is restarting or a backend is briefly away) and CANCELLED as sent by the server
(a call that raced a gateway's shutdown; a cancellation by the caller itself surfaces as
`asyncio.CancelledError` or a closed client, never as a retryable error). The policy is pure
decision logic; the sync and async clients do the actual sleeping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import grpc

from cde_client.errors import CdeError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The wait before retry k (1-based) is b = min(max_backoff, initial_backoff *
    multiplier**(k-1)), times a uniform factor in [0.5, 1] when `jitter` (so clients that
    failed together spread out); a server `retry_after` hint raises it. A call is tried at
    most `max_attempts` times and never past its timeout.
    """

    max_attempts: int = 8
    initial_backoff: float = 0.25
    max_backoff: float = 4.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def delay_before_retry(
        self,
        error: CdeError,
        attempt: int,
        *,
        idempotent: bool,
        time_left: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before retrying after try `attempt` failed; None: give up."""
        if not idempotent or attempt >= self.max_attempts or error.code not in self.retry_on:
            return None
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        delay = bound * (rng or random).uniform(0.5, 1.0) if self.jitter else bound
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        if time_left is not None and delay >= time_left:
            return None
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)
"""Never retry."""

DEFAULT_RETRY = RetryPolicy()
"""Up to 8 tries spread over 8 to 16 seconds (enough for a gateway restart)."""
