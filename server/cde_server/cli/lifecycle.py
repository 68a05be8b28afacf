"""What the long-running commands (`cde serve`, `cde triton`) share: stopping on SIGINT or
SIGTERM, reporting errors, and the exit status of each kind of failure."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

EXIT_STOPPED = 0
EXIT_FAILED = 1  # something went wrong while running (Triton did not start, died, a port)
EXIT_MISCONFIGURED = 2  # the settings or files given cannot work; nothing was started


class StopRequested(BaseException):
    """Raised by the SIGINT/SIGTERM handler to unwind start-up or waiting."""


def report(command: str, message: object) -> None:
    """Print `cde <command>: <message>` on stderr."""
    print(f"cde {command}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals(
    on_signal: Callable[[signal.Signals], None] | None = None,
) -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises StopRequested (later ones are
    ignored: stopping is already under way); the previous handlers come back afterwards."""

    def request_stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if on_signal is not None:
            on_signal(signal.Signals(signum))
        raise StopRequested

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def failure_status(command: str, exc: Exception) -> int:
    """Report a start-up failure of the embedded Triton or a port; its exit status."""
    from cde_server.triton.environment import TritonSetupError

    report(command, exc)
    return EXIT_MISCONFIGURED if isinstance(exc, TritonSetupError) else EXIT_FAILED
