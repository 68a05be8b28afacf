"""The typed clients behind the LangChain and LlamaIndex adapters: one `CdeClient`, and one
`AsyncCdeClient` per event loop (grpc.aio channels belong to the loop that made them)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cde_client.async_client import AsyncCdeClient
from cde_client.sync_client import CdeClient


class AdapterClients:
    """Embeds documents and queries with the document and query prompts on one context set."""

    def __init__(
        self,
        *,
        address: str | None,
        context: str | None,
        client: CdeClient | None,
        client_options: dict[str, Any],
    ) -> None:
        self.context = context
        self._address = address
        self._options = client_options
        self._client = client
        self._async: tuple[asyncio.AbstractEventLoop, AsyncCdeClient] | None = None

    @property
    def sync(self) -> CdeClient:
        """The blocking client (made on first use)."""
        if self._client is None:
            self._client = CdeClient(self._address, **self._options)
        return self._client

    def asynchronous(self) -> AsyncCdeClient:
        """The asyncio client of the running loop (made on first use in each loop)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            address = self._address if self._address is not None else self.sync._core.address
            self._async = (loop, AsyncCdeClient(address, **self._options))
        return self._async[1]

    def documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Document-prompt vectors."""
        vectors: list[list[float]] = self.sync.embed_documents(
            list(texts), context=self.context
        ).embeddings.tolist()
        return vectors

    def queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Query-prompt vectors."""
        vectors: list[list[float]] = self.sync.embed_queries(
            list(texts), context=self.context
        ).embeddings.tolist()
        return vectors

    async def adocuments(self, texts: Sequence[str]) -> list[list[float]]:
        """Document-prompt vectors, on the async client."""
        result = await self.asynchronous().embed_documents(list(texts), context=self.context)
        vectors: list[list[float]] = result.embeddings.tolist()
        return vectors

    async def aqueries(self, texts: Sequence[str]) -> list[list[float]]:
        """Query-prompt vectors, on the async client."""
        result = await self.asynchronous().embed_queries(list(texts), context=self.context)
        vectors: list[list[float]] = result.embeddings.tolist()
        return vectors
