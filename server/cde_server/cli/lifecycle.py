"""What the long-running commands (`cde serve`, `cde triton`) share: the model options,
settings from options, stopping on SIGINT or SIGTERM, reporting errors, and the exit status of
each kind of failure."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from cde_model.dtypes import DTYPES

if TYPE_CHECKING:
    from pydantic import BaseModel

SettingsT = TypeVar("SettingsT", bound="BaseModel")

EXIT_STOPPED = 0
EXIT_FAILED = 1  # something went wrong while running (Triton did not start, died, a port)
EXIT_MISCONFIGURED = 2  # the settings or files given cannot work; nothing was started


def add_model_options(parser: argparse.ArgumentParser, model_default: str) -> None:
    """--model, --dtype and --tokenizer, as both long-running commands take them."""
    parser.add_argument(
        "--model", help=f'checkpoint directory or "demo" (CDE_MODEL{model_default})'
    )
    parser.add_argument("--dtype", choices=DTYPES, help="(CDE_DTYPE)")
    parser.add_argument(
        "--tokenizer",
        help="directory with tokenizer.json, for a cde-small-v2 snapshot that has none "
        "(CDE_TOKENIZER)",
    )


def settings_from_options(
    command: str, kind: type[SettingsT], options: Mapping[str, object]
) -> SettingsT | None:
    """`kind` from the options given (None ones fall back to CDE_* variables and defaults), or
    None after reporting why the settings are invalid."""
    from pydantic import ValidationError  # the gateway extra; `cde` client commands lack it

    try:
        return kind(**{name: value for name, value in options.items() if value is not None})
    except ValidationError as exc:
        report(command, f"invalid settings:\n{exc}")
        return None


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
