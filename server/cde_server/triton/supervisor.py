"""Keeps `cde serve`'s embedded tritonserver running while the gateway stays up.

When the server exits (killed, crashed, aborted on a stuck stub) its last lines are logged at
ERROR and it is started again after a backoff; meanwhile the gateway answers UNAVAILABLE and
reports NOT_SERVING. Repeated deaths in a short window end the supervision with a message that
names the cause, and `cde serve` stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cde_server.triton.environment import TritonSetupError
from cde_server.triton.launcher import TritonProcess, TritonStartError

logger = logging.getLogger("cde_server.triton.supervisor")

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0
POLL_S = 0.5


class TritonSupervisor:
    """Restarts a started `TritonProcess` when it dies; `run()` returns only when giving up."""

    def __init__(
        self,
        process: TritonProcess,
        *,
        on_restarted: Callable[[], Awaitable[None]] | None = None,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        backoff_s: tuple[float, ...] = BACKOFF_S,
    ) -> None:
        self._process = process
        self._on_restarted = on_restarted
        self._max_failures = max_failures
        self._window_s = window_s
        self._backoff_s = backoff_s
        self._failures: list[float] = []
        self.restarts = 0

    async def run(self) -> str:
        """Watch and restart; the reason for giving up once the server keeps failing."""
        while True:
            await asyncio.sleep(POLL_S)
            if self._process.is_running():
                continue
            cause = self._record_death()
            now = time.monotonic()
            self._failures = [t for t in self._failures if now - t < self._window_s] + [now]
            if len(self._failures) >= self._max_failures:
                return (
                    f"tritonserver failed {len(self._failures)} times within "
                    f"{self._window_s:.0f} s; last: {cause}"
                )
            delay = self._backoff_s[min(len(self._failures), len(self._backoff_s)) - 1]
            logger.warning("restarting tritonserver in %.0f s", delay)
            await asyncio.sleep(delay)
            if await self._restart():
                self.restarts += 1
                logger.info("tritonserver restarted and ready (restart %d)", self.restarts)
                if self._on_restarted is not None:
                    await self._on_restarted()

    def _record_death(self) -> str:
        """Log why the server is gone; a one-line cause."""
        status = self._process.returncode
        tail = self._process.log_tail()
        logger.error("tritonserver exited (status %s); its last lines:\n%s", status, tail)
        last = tail.splitlines()[-1] if tail else "no output"
        return f"exit status {status} ({last})"

    async def _restart(self) -> bool:
        """Launch again (in this thread: the child dies with us) and wait until ready."""
        try:
            self._process.relaunch()
            timeout = self._process.settings.triton_startup_timeout_s
            await asyncio.to_thread(self._process.wait_ready, timeout)
        except (TritonStartError, TritonSetupError, OSError) as exc:
            logger.error("tritonserver did not come back: %s", exc)
            await asyncio.to_thread(self._process.stop)  # counted as the next failure
            return False
        return True
