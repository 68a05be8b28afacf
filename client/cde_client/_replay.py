"""The caller's documents, read once and kept, so that a retried stream can send them again."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Replayable(Generic[T]):
    """A (sync or async) iterable that each iteration reads from the start: the items read so
    far come from memory, the rest from the caller's iterable, which is read only once.

    Keeps every item read until it is dropped (a create's documents: at most the server's
    limit on their total size).
    """

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._items = items
        self._read: list[T] = []
        self._iterator: Iterator[T] | None = None
        self._async_iterator: AsyncIterator[T] | None = None
        # grpc's blocking channel reads requests on its own thread; a try that failed may
        # still be inside the caller's iterable when the retry starts reading
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[T]:
        if not isinstance(self._items, Iterable):
            raise TypeError("the sync client needs a plain iterable, not an async one")
        index = 0
        while True:
            with self._lock:
                if index == len(self._read):
                    if self._iterator is None:
                        self._iterator = iter(self._items)
                    try:
                        self._read.append(next(self._iterator))
                    except StopIteration:
                        return
                item = self._read[index]
            yield item
            index += 1

    async def __aiter__(self) -> AsyncIterator[T]:
        if isinstance(self._items, Iterable):
            for item in self:
                yield item
            return
        index = 0
        while True:
            if index == len(self._read):
                if self._async_iterator is None:
                    self._async_iterator = aiter(self._items)
                try:
                    self._read.append(await anext(self._async_iterator))
                except StopAsyncIteration:
                    return
            yield self._read[index]
            index += 1
