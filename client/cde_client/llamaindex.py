"""LlamaIndex adapter: `CdeEmbedding`, a LlamaIndex `BaseEmbedding` over the typed client.

    from cde_client.llamaindex import CdeEmbedding

    embed_model = CdeEmbedding(address="localhost:50051", context="docs")
    vector = embed_model.get_query_embedding("which document?")

Texts (documents) get the document prompt, queries the query prompt, both on `context`
(None: the built-in default context); the async methods use an `AsyncCdeClient`. Needs the
`llamaindex` extra (`pip install 'cde-serve[llamaindex]'`).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from cde_client._adapter_clients import AdapterClients
from cde_client.sync_client import CdeClient


class CdeEmbedding(BaseEmbedding):
    """Contextual document embeddings from a cde-serve gateway, for LlamaIndex."""

    context: str | None = None
    _clients: AdapterClients = PrivateAttr()

    def __init__(
        self,
        address: str | None = None,
        *,
        context: str | None = None,
        client: CdeClient | None = None,
        client_options: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """`address`: the gateway's gRPC host:port (default $CDE_ADDRESS); `context`: the
        context set; `client`: an existing `CdeClient`; `client_options`: passed to the clients
        (api_key, root_certificates, timeout, ...); `fields`: BaseEmbedding's (model_name,
        embed_batch_size, ...)."""
        fields.setdefault("model_name", f"cde:{context or 'default'}")
        fields["context"] = context
        super().__init__(**fields)
        self._clients = AdapterClients(
            address=address, context=context, client=client, client_options=client_options or {}
        )

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name of this embedding class."""
        return "CdeEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._clients.queries([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._clients.aqueries([query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._clients.documents([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._clients.adocuments([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._clients.documents(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._clients.adocuments(texts)
