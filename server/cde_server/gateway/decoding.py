"""What every request passes before its handler: its key, its size, its bytes, its pace.

- Authentication first: with API keys on, a call without a valid key is refused from its
  metadata, before any message is parsed (an unauthenticated caller costs no parsing).
- Size per RPC: a message larger than what a valid request of that RPC can need is refused
  (RESOURCE_EXHAUSTED) before it is parsed (`MessageLimits`).
- Request streams that send nothing for CDE_STREAM_IDLE_TIMEOUT_S end with
  DEADLINE_EXCEEDED, freeing their stream slot.

Bytes that do not parse: INVALID_ARGUMENT instead of grpc's UNKNOWN.

grpc.aio deserializes a request before the handler runs; a `DecodeError` there (invalid UTF-8
in a string field, a truncated message, bytes that are not protobuf at all) would end the call
with UNKNOWN "Unexpected DecodeError". `DecodeGuard` wraps every handler's deserializer so that
a bad message becomes a `Refused` marker, and wraps the behaviour so that the marker fails
the call with INVALID_ARGUMENT: at once for a unary request, when the stream reaches it for a
streamed one (earlier messages are processed normally). Calls of the counted service are
rejected through its `CallScopes`, so they are logged and counted like any other failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from cde_server.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnauthenticatedError,
)
from cde_server.gateway.call_scope import CallScopes

Deserializer = Callable[[bytes], Any]
Reject = Callable[[Any, "Refused"], Awaitable[None]]


class UndecodableMessageError(InvalidArgumentError):
    """A request message (or a message of a request stream) could not be parsed."""


@dataclass(frozen=True)
class Refused:
    """Stands in for a request message that was not parsed, and says why."""

    error: ServiceError

    def describe(self) -> str:
        """The client-facing explanation."""
        return self.error.message


def undecodable(message_type: str, reason: str) -> Refused:
    """The marker of bytes that do not parse as `message_type`."""
    return Refused(
        UndecodableMessageError(
            f"the request is not a valid {message_type} message: {reason} (text fields must "
            "be UTF-8; check the field types and that the message is complete)"
        )
    )


@dataclass(frozen=True)
class MessageLimits:
    """Largest request message each RPC accepts, by method name (others: `default`)."""

    by_rpc: Mapping[str, int]
    default: int

    def of(self, rpc: str) -> int:
        """The limit of `rpc`."""
        return self.by_rpc.get(rpc, self.default)


def guarded(deserializer: Deserializer, rpc: str = "", limit: int | None = None) -> Deserializer:
    """`deserializer`, returning a `Refused` marker instead of raising, and for messages over
    `limit` bytes without parsing them."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "request"))

    def deserialize(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return Refused(
                ResourceExhaustedError(
                    f"{_article(rpc or message_type)} message of {len(data)} bytes; the limit is "
                    f"{limit} (what a valid request can need)"
                )
            )
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the client's input
            return undecodable(message_type, str(exc) or type(exc).__name__)

    return deserialize


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def unparsed(_data: bytes) -> Any:
    """The deserializer of a refused call: the bytes are never parsed."""
    return None


class _CheckedRequests:
    """A request stream that raises the error of a refused message when it reaches one, and
    DEADLINE_EXCEEDED when the client sends nothing for `idle_timeout_s`."""

    def __init__(self, requests: AsyncIterator[Any], idle_timeout_s: float | None) -> None:
        self._requests = requests
        self._idle_timeout_s = idle_timeout_s
        self._iterator: AsyncIterator[Any] | None = None  # made on first use, as grpc expects

    def __aiter__(self) -> _CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._requests.__aiter__()
        try:
            message = await asyncio.wait_for(self._iterator.__anext__(), self._idle_timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"the request stream sent nothing for {self._idle_timeout_s:.0f} s "
                "(CDE_STREAM_IDLE_TIMEOUT_S); it was closed"
            ) from None
        if isinstance(message, Refused):
            raise message.error
        return message


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Server interceptor: undecodable requests end with INVALID_ARGUMENT, never UNKNOWN."""

    def __init__(
        self,
        calls: CallScopes | None = None,
        counted_services: Collection[str] = (),
        *,
        limits: MessageLimits | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        """`calls` authenticates, logs and counts the calls of `counted_services` (full service
        names); `limits` bounds their message sizes."""
        self._calls = calls
        self._counted = frozenset(counted_services)
        self._limits = limits
        self._idle_timeout_s = idle_timeout_s
        # method → (its handler, the guarded copy, the refusing copy): built once per method
        self._guarded: dict[
            str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler, grpc.RpcMethodHandler]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The next handler, with its deserializer and behaviour guarded."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            service, _, rpc = method.lstrip("/").rpartition("/")
            counted = service in self._counted
            limit = self._limits.of(rpc) if counted and self._limits is not None else None
            reject = self._rejecter(rpc if counted else None)
            cached = (
                handler,
                _guard_handler(
                    handler,
                    reject,
                    guarded(handler.request_deserializer, rpc, limit),
                    self._idle_timeout_s,
                ),
                _refusing_handler(handler, self._refuse_unauthenticated(rpc)),
            )
            self._guarded[method] = cached
        if self._unauthenticated(method, handler_call_details):
            return cached[2]
        return cached[1]

    def _unauthenticated(self, method: str, details: grpc.HandlerCallDetails) -> bool:
        """Whether a call of a counted service comes without a valid key (auth on)."""
        if self._calls is None or not self._calls.authenticator.enabled:
            return False
        if method.lstrip("/").rpartition("/")[0] not in self._counted:
            return False
        try:
            self._calls.authenticator.authenticate(details.invocation_metadata)
        except UnauthenticatedError:
            return True
        return False

    def _refuse_unauthenticated(self, rpc: str) -> Callable[[Any], Awaitable[None]]:
        """Ends a call in its scope, which finds the key missing or unknown (UNAUTHENTICATED)."""

        async def refuse(context: Any) -> None:
            assert self._calls is not None
            async with self._calls.open(rpc, context):
                raise UnauthenticatedError("unknown API key")  # not reached: the scope raises

        return refuse

    def _rejecter(self, rpc: str | None) -> Reject:
        """Ends a call with INVALID_ARGUMENT, through a call scope when `rpc` is counted."""

        async def reject(context: Any, refused: Refused) -> None:
            if rpc is None or self._calls is None:
                code = grpc.StatusCode[refused.error.code]
                await context.abort(code, refused.describe())
                return
            async with self._calls.open(rpc, context):
                raise refused.error

        return reject


def _guard_handler(
    handler: grpc.RpcMethodHandler,
    reject: Reject,
    deserializer: Deserializer,
    idle_timeout_s: float | None,
) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour refuses `Refused` requests."""
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behavior = _guard_stream(handler.stream_stream, reject, idle_timeout_s)
        if behavior is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if handler.request_streaming:
        behavior = _guard_stream(handler.stream_unary, reject, idle_timeout_s)
        if behavior is None:
            return handler
        return grpc.stream_unary_rpc_method_handler(behavior, deserializer, serializer)
    if handler.response_streaming:
        behavior = _guard_unary(handler.unary_stream, reject)
        if behavior is None:
            return handler
        return grpc.unary_stream_rpc_method_handler(behavior, deserializer, serializer)
    behavior = _guard_unary(handler.unary_unary, reject)
    if behavior is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(behavior, deserializer, serializer)


def _guard_unary(inner: Any, reject: Reject) -> Any:
    """Wrap a behaviour taking one request (None: not an async behaviour, left alone)."""
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Refused):
                await reject(context, request)
                return
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response

        return generator
    if inspect.iscoroutinefunction(inner):

        async def coroutine(request: Any, context: Any) -> Any:
            if isinstance(request, Refused):
                await reject(context, request)
                return None
            return await inner(request, context)

        return coroutine
    return None


def _guard_stream(inner: Any, reject: Reject, idle_timeout_s: float | None) -> Any:
    """Wrap a behaviour taking a request stream (None: not an async behaviour, left alone)."""
    if inspect.isasyncgenfunction(inner):

        async def generator(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(
                    inner(_CheckedRequests(requests, idle_timeout_s), context)
                ) as responses:
                    async for response in responses:
                        yield response
            except ServiceError as exc:  # a handler without a call scope
                await context.abort(grpc.StatusCode[exc.code], exc.message)

        return generator
    if inspect.iscoroutinefunction(inner):

        async def coroutine(requests: AsyncIterator[Any], context: Any) -> Any:
            try:
                return await inner(_CheckedRequests(requests, idle_timeout_s), context)
            except ServiceError as exc:
                await context.abort(grpc.StatusCode[exc.code], exc.message)
                return None

        return coroutine
    return None


def _refusing_handler(
    handler: grpc.RpcMethodHandler, refuse: Callable[[Any], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that parses nothing and ends the call."""
    serializer = handler.response_serializer
    if handler.response_streaming:

        async def generator(_request: Any, context: Any) -> AsyncIterator[Any]:
            await refuse(context)
            return
            yield  # an async generator, as grpc expects for a streamed response

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(generator, unparsed, serializer)
        return grpc.unary_stream_rpc_method_handler(generator, unparsed, serializer)

    async def coroutine(_request: Any, context: Any) -> Any:
        await refuse(context)
        return None

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(coroutine, unparsed, serializer)
    return grpc.unary_unary_rpc_method_handler(coroutine, unparsed, serializer)
