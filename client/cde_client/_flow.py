"""The protocol between the shared operations and the two transports (sync and asyncio).

Every public client method is written once, in `_operations`, as a generator that *yields*
what it needs done (a call, a stream, a pause) and receives the outcome; a failed call is
thrown back into it as a `CdeError`. The sync transport performs each step with a blocking
gRPC channel (so it also works under gevent), the async one with `grpc.aio`. Neither
transport knows anything about requests, responses, chunking or retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from cde_client._calls import Rpc
from cde_client.errors import error_from_rpc

T = TypeVar("T")
ItemT = TypeVar("ItemT", contravariant=True)


@dataclass(frozen=True)
class Call:
    """Make a unary call; the outcome is the response message."""

    rpc: Rpc[Any, Any]
    request: Message
    timeout: float | None


@dataclass(frozen=True)
class SendStream:
    """Make a client-streaming call with `requests`; the outcome is the response message."""

    rpc: Rpc[Any, Any]
    requests: RequestSource[Any]
    timeout: float | None


@dataclass(frozen=True)
class OpenStream:
    """Start a bidirectional stream sending `requests`; the outcome is a handle for `Receive`.

    The transport cancels the stream if the operation ends before reading it to the end.
    """

    rpc: Rpc[Any, Any]
    requests: RequestSource[Any]
    timeout: float | None


@dataclass(frozen=True)
class StreamHandle:
    """An open bidirectional stream (the transport's call object) and its request source."""

    call: Any
    requests: RequestSource[Any]


@dataclass(frozen=True)
class Receive:
    """Read the next response of an open stream; the outcome is the message or `END`."""

    stream: StreamHandle


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds (time.sleep, gevent-friendly, or asyncio.sleep)."""

    seconds: float


@dataclass(frozen=True)
class Emit(Generic[T]):
    """Hand one item to the caller of an iterating method."""

    value: T


class _End:
    def __repr__(self) -> str:
        return "END"


END: Any = _End()
"""Outcome of `Receive` once the server has closed the stream."""

Step: TypeAlias = Call | SendStream | OpenStream | Receive | Sleep
Flow: TypeAlias = Generator[Step, Any, T]
"""An operation that returns one value."""
Stream: TypeAlias = Generator[Step | Emit[T], Any, None]
"""An operation that produces a sequence of values."""


class Encoder(Protocol[ItemT]):
    """Turns the caller's items into request messages for a client stream."""

    def head(self) -> list[Message]:
        """Messages sent before the first item."""

    def encode(self, item: ItemT) -> list[Message]:
        """Messages for one item (possibly none, when it is buffered)."""

    def finish(self) -> list[Message]:
        """Messages sent after the last item."""


class RequestSource(Generic[ItemT]):
    """The request messages of a stream, made lazily from a (sync or async) iterable.

    An exception from the caller's iterable or from the encoder is kept in `error`: gRPC
    reports it only as a cancelled call, and the transport raises the original instead.
    """

    def __init__(self, items: Iterable[ItemT] | AsyncIterable[ItemT], encoder: Encoder[ItemT]):
        self._items = items
        self._encoder = encoder
        self.error: Exception | None = None

    def iterate(self) -> Iterator[Message]:
        """The messages, for a blocking channel."""
        if not isinstance(self._items, Iterable):
            raise TypeError("the sync client needs a plain iterable, not an async one")
        try:
            yield from self._encoder.head()
            for item in self._items:
                yield from self._encoder.encode(item)
            yield from self._encoder.finish()
        except Exception as exc:
            self.error = exc
            raise

    async def aiterate(self) -> AsyncIterator[Message]:
        """The messages, for an asyncio channel (the items may be a sync or async iterable)."""
        try:
            for message in self._encoder.head():
                yield message
            if isinstance(self._items, AsyncIterable):
                async for item in self._items:
                    for message in self._encoder.encode(item):
                        yield message
            else:
                for item in self._items:
                    for message in self._encoder.encode(item):
                        yield message
            for message in self._encoder.finish():
                yield message
        except Exception as exc:
            self.error = exc
            raise


class Driver(Generic[T]):
    """Steps an operation for a transport: next step out, that step's outcome (or error) in."""

    def __init__(self, flow: Generator[Step | Emit[Any], Any, T]) -> None:
        self._flow = flow
        self._outcome: Any = None
        self._error: Exception | None = None
        self.result: T | None = None
        """The operation's return value once `next_step` has returned None."""

    def next_step(self) -> Step | Emit[Any] | None:
        """The operation's next step, or None when it has finished."""
        outcome, error = self._outcome, self._error
        self._outcome, self._error = None, None
        try:
            if error is not None:
                return self._flow.throw(error)
            return self._flow.send(outcome)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def succeeded(self, outcome: Any) -> None:
        """The last step's outcome."""
        self._outcome = outcome

    def failed(self, error: Exception) -> None:
        """The last step failed: `error` is raised inside the operation."""
        self._error = error

    def close(self) -> None:
        """Abandon the operation (runs its cleanup)."""
        self._flow.close()


def call_failure(error: grpc.RpcError, requests: RequestSource[Any] | None) -> Exception:
    """The exception for a failed call: the caller's own if their iterable raised."""
    if requests is not None and requests.error is not None:
        return requests.error
    return error_from_rpc(error)
