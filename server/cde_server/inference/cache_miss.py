"""The gateway's side of Triton's context-cache protocol (see `triton.protocol`).

Requests carry CONTEXT_ID only. On a miss the dataset embeddings are loaded once (single
flight per context id), a one-row request carrying them primes the cache, and the remaining
rows are resent without them; a second miss (another instance, eviction) resends with the
embeddings attached to every row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from cde_server.inference.interface import (
    ContextRef,
    DatasetLoader,
    FloatMatrix,
    InferenceObserver,
)

RowsRunner = Callable[[int, int, FloatMatrix | None], Awaitable[FloatMatrix]]
"""Runs rows [first, last) of a request, with the dataset embeddings attached or not."""


class ContextNotCached(Exception):
    """Triton answered a cache miss (NOT_FOUND with the CDE_CONTEXT_NOT_CACHED marker)."""


class ContextPrimer:
    """Runs second-stage rows by context id and primes Triton's cache on a miss."""

    def __init__(self, observer: InferenceObserver) -> None:
        self._observer = observer
        self._priming: dict[str, asyncio.Future[None]] = {}

    async def run(self, start: int, end: int, context: ContextRef, run: RowsRunner) -> FloatMatrix:
        """Rows [start, end) without embeddings; on a miss prime the cache and retry."""
        try:
            vectors = await run(start, end, None)
        except ContextNotCached:
            self._observer.context_cache(hit=False)
        else:
            self._observer.context_cache(hit=True)
            return vectors

        async def prime() -> FloatMatrix:
            return await run(start, start + 1, await context.load())

        first = await self._prime(context.context_id, prime)
        if first is not None:
            if end - start == 1:
                return first
            try:
                rest = await run(start + 1, end, None)
            except ContextNotCached:
                rest = await run(start + 1, end, await context.load())
            return np.concatenate([first, rest])
        try:  # another task primed the cache meanwhile
            return await run(start, end, None)
        except ContextNotCached:
            return await run(start, end, await context.load())

    async def _prime(
        self, context_id: str, run_one: Callable[[], Awaitable[FloatMatrix]]
    ) -> FloatMatrix | None:
        """Run the priming request unless another task is priming `context_id`; then wait."""
        pending = self._priming.get(context_id)
        if pending is not None:
            await asyncio.shield(pending)
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._priming[context_id] = done
        try:
            return await run_one()
        finally:
            del self._priming[context_id]
            done.set_result(None)


def load_once(context: ContextRef) -> ContextRef:
    """`context` whose loader runs at most once however many chunks of one request miss."""
    task: asyncio.Task[FloatMatrix] | None = None
    load: DatasetLoader = context.load

    async def load_shared() -> FloatMatrix:
        nonlocal task
        if task is None:
            task = asyncio.ensure_future(load())
        return await asyncio.shield(task)

    return ContextRef(context.context_id, load_shared)
