"""Requests whose bytes do not parse: INVALID_ARGUMENT instead of grpc's UNKNOWN.

grpc.aio deserializes a request before the handler runs; a `DecodeError` there (invalid UTF-8
in a string field, a truncated message, bytes that are not protobuf at all) would end the call
with UNKNOWN "Unexpected DecodeError". `DecodeGuard` wraps every handler's deserializer so that
a bad message becomes an `Undecodable` marker, and wraps the behaviour so that the marker fails
the call with INVALID_ARGUMENT: at once for a unary request, when the stream reaches it for a
streamed one (earlier messages are processed normally). Calls of the counted service are
rejected through its `CallScopes`, so they are logged and counted like any other failure.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc

from cde_server.errors import InvalidArgumentError
from cde_server.gateway.call_scope import CallScopes

Deserializer = Callable[[bytes], Any]
Reject = Callable[[Any, str], Awaitable[None]]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request message whose bytes could not be parsed."""

    message_type: str
    reason: str

    def describe(self) -> str:
        """The client-facing explanation."""
        return (
            f"the request is not a valid {self.message_type} message: {self.reason} "
            "(text fields must be UTF-8; check the field types and that the message is complete)"
        )


class UndecodableMessageError(InvalidArgumentError):
    """A request message (or a message of a request stream) could not be parsed."""


def guarded(deserializer: Deserializer) -> Deserializer:
    """`deserializer`, returning an `Undecodable` marker instead of raising."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "request"))

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the client's input
            return Undecodable(message_type, str(exc) or type(exc).__name__)

    return deserialize


class _CheckedRequests:
    """A request stream that raises `UndecodableMessageError` on reaching a bad message."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self._iterator: AsyncIterator[Any] | None = None  # made on first use, as grpc expects

    def __aiter__(self) -> _CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._requests.__aiter__()
        message = await self._iterator.__anext__()
        if isinstance(message, Undecodable):
            raise UndecodableMessageError(message.describe())
        return message


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Server interceptor: undecodable requests end with INVALID_ARGUMENT, never UNKNOWN."""

    def __init__(
        self, calls: CallScopes | None = None, counted_services: Collection[str] = ()
    ) -> None:
        """`calls` logs and counts rejected calls of `counted_services` (full service names)."""
        self._calls = calls
        self._counted = frozenset(counted_services)
        # method → (its handler, the guarded copy): built once per method, not per call
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, _, rpc = method.lstrip("/").rpartition("/")
        guarded_handler = _guard_handler(
            handler, self._rejecter(rpc if service in self._counted else None)
        )
        self._guarded[method] = (handler, guarded_handler)
        return guarded_handler

    def _rejecter(self, rpc: str | None) -> Reject:
        """Ends a call with INVALID_ARGUMENT, through a call scope when `rpc` is counted."""

        async def reject(context: Any, message: str) -> None:
            if rpc is None or self._calls is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                return
            async with self._calls.open(rpc, context):
                raise UndecodableMessageError(message)

        return reject


def _guard_handler(handler: grpc.RpcMethodHandler, reject: Reject) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour refuses `Undecodable` requests."""
    deserializer = guarded(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behavior = _guard_stream(handler.stream_stream, reject)
        if behavior is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if handler.request_streaming:
        behavior = _guard_stream(handler.stream_unary, reject)
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
            if isinstance(request, Undecodable):
                await reject(context, request.describe())
                return
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response

        return generator
    if inspect.iscoroutinefunction(inner):

        async def coroutine(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await reject(context, request.describe())
                return None
            return await inner(request, context)

        return coroutine
    return None


def _guard_stream(inner: Any, reject: Reject) -> Any:
    """Wrap a behaviour taking a request stream (None: not an async behaviour, left alone)."""
    if inspect.isasyncgenfunction(inner):

        async def generator(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(
                    inner(_CheckedRequests(requests), context)
                ) as responses:
                    async for response in responses:
                        yield response
            except UndecodableMessageError as exc:  # a handler without a call scope
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)

        return generator
    if inspect.iscoroutinefunction(inner):

        async def coroutine(requests: AsyncIterator[Any], context: Any) -> Any:
            try:
                return await inner(_CheckedRequests(requests), context)
            except UndecodableMessageError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
                return None

        return coroutine
    return None
