"""Progress reporting for uploads: a tqdm bar when tqdm is installed, else plain stderr lines.

tqdm is an optional dependency, so it is imported only when a bar is asked for.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol


class Progress(Protocol):
    """What the client reports while it sends documents."""

    def update(self, count: int) -> None:
        """`count` more documents were sent."""

    def set_status(self, status: str) -> None:
        """Say what is happening now (e.g. waiting for the server)."""

    def close(self) -> None:
        """Finish the display."""


class NoProgress:
    """Reports nothing."""

    def update(self, count: int) -> None:
        pass

    def set_status(self, status: str) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmProgress:
    def __init__(self, total: int | None, description: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=description, unit="doc", unit_scale=True)

    def update(self, count: int) -> None:
        self._bar.update(count)

    def set_status(self, status: str) -> None:
        self._bar.set_postfix_str(status)

    def close(self) -> None:
        self._bar.close()


class _LineProgress:
    """A fallback without tqdm: one stderr line at most every second, and a last one."""

    def __init__(self, total: int | None, description: str, interval: float = 1.0) -> None:
        self._total = total
        self._description = description
        self._interval = interval
        self._count = 0
        self._last = 0.0

    def update(self, count: int) -> None:
        self._count += count
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._print("")

    def set_status(self, status: str) -> None:
        self._print(status)

    def close(self) -> None:
        self._print("done")

    def _print(self, status: str) -> None:
        total = f"/{self._total}" if self._total is not None else ""
        suffix = f" ({status})" if status else ""
        print(
            f"{self._description}: {self._count}{total} documents sent{suffix}",
            file=sys.stderr,
            flush=True,
        )


def open_progress(enabled: bool, total: int | None, description: str) -> Progress:
    """A progress display (tqdm if importable) when `enabled`, else one that shows nothing."""
    if not enabled:
        return NoProgress()
    try:
        return _TqdmProgress(total, description)
    except ImportError:
        return _LineProgress(total, description)
