"""Polling helpers for tests that wait for a state: a condition, a gateway's health."""

from __future__ import annotations

import time
from collections.abc import Callable

from cde_client import CdeClient, HealthStatus


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until true; the seconds it took (AssertionError after `timeout_s`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not {what} after {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def health(address: str) -> HealthStatus:
    """The gateway's overall health status (UNKNOWN when it does not answer)."""
    try:
        with CdeClient(address, retry=False, timeout=3) as client:
            return client.health()
    except Exception:
        return HealthStatus.UNKNOWN
