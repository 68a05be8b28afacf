"""A call's deadline: the caller's budget capped by the Triton timeout."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cde_server.errors import DeadlineExceededError


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which the work must be done."""

    at: float

    @classmethod
    def within(cls, timeout_s: float | None, cap_s: float) -> Deadline:
        """`timeout_s` from now, at most `cap_s` (None: `cap_s`)."""
        budget = cap_s if timeout_s is None else min(timeout_s, cap_s)
        return cls(time.monotonic() + budget)

    def remaining(self) -> float:
        """Seconds left; DEADLINE_EXCEEDED when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline exceeded while waiting for the model")
        return left
