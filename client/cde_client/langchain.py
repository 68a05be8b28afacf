"""LangChain adapter: `CdeEmbeddings`, a `langchain_core` `Embeddings` over the typed client.

    from cde_client.langchain import CdeEmbeddings

    embeddings = CdeEmbeddings(address="localhost:50051", context="docs")
    vectors = embeddings.embed_documents(["first document", "second document"])
    query = embeddings.embed_query("which document?")

Documents get the document prompt, queries the query prompt, both on `context` (None: the
built-in default context). The async methods use an `AsyncCdeClient`. Needs the `langchain`
extra (`pip install 'cde-serve[langchain]'`).
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings

from cde_client._adapter_clients import AdapterClients
from cde_client.sync_client import CdeClient


class CdeEmbeddings(Embeddings):
    """Contextual document embeddings from a cde-serve gateway, for LangChain."""

    def __init__(
        self,
        address: str | None = None,
        *,
        context: str | None = None,
        client: CdeClient | None = None,
        **client_options: Any,
    ) -> None:
        """`address`: the gateway's gRPC host:port (default $CDE_ADDRESS); `context`: the
        context set; `client`: an existing `CdeClient` to use; `client_options`: passed to the
        clients (api_key, root_certificates, timeout, ...)."""
        self._clients = AdapterClients(
            address=address, context=context, client=client, client_options=client_options
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (document prompt)."""
        return self._clients.documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (query prompt)."""
        return self._clients.queries([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents on the async client."""
        return await self._clients.adocuments(texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a search query on the async client."""
        return (await self._clients.aqueries([text]))[0]
