"""The model Triton serves, as `cde_model_info` reports it, and its built-in default context.

The default context (`cde_model.context.default_context(N)` with the document prefix, embedded
once by stage 1) is computed on first use or by `warm_up()`, and recomputed only when Triton
starts serving another model (a different fingerprint).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import numpy.typing as npt

from cde_server.inference.interface import ContextRef, Inference, ServedModelInfo
from cde_server.triton import protocol as triton_protocol

logger = logging.getLogger("cde_server.inference.served_model")


class ServedModel:
    """Cached model information and the lazily embedded default context."""

    def __init__(self, inference: Inference, *, document_prefix: str) -> None:
        """`document_prefix` is prepended to the default context's documents."""
        self._inference = inference
        self._document_prefix = document_prefix
        self._info: ServedModelInfo | None = None
        self._default: dict[str, asyncio.Task[npt.NDArray[np.float32]]] = {}

    @property
    def cached_info(self) -> ServedModelInfo | None:
        """The last model information read, if any."""
        return self._info

    async def info(self) -> ServedModelInfo:
        """The served model's information (read from Triton on first use)."""
        if self._info is None:
            return await self.refresh()
        return self._info

    async def refresh(self) -> ServedModelInfo:
        """Read the model information again (Triton may have been restarted with another model)."""
        info = await self._inference.model_info()
        if self._info is not None and info.fingerprint != self._info.fingerprint:
            logger.warning(
                "Triton now serves model %s (family %s, fingerprint %s)",
                info.name,
                info.family or "unknown",
                info.fingerprint[:12],
            )
        self._info = info
        for fingerprint in [f for f in self._default if f != info.fingerprint]:
            self._default.pop(fingerprint).cancel()
        return info

    async def default_context(self) -> tuple[ContextRef, npt.NDArray[np.float32]]:
        """The built-in default context of the served model: its reference and embeddings."""
        info = await self.info()
        task = self._default.get(info.fingerprint)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._embed_default(info.corpus_size))
            self._default[info.fingerprint] = task
        embeddings = await asyncio.shield(task)
        context = triton_protocol.context_id(embeddings)

        async def load() -> npt.NDArray[np.float32]:
            return embeddings

        return ContextRef(context, load), embeddings

    async def warm_up(self) -> None:
        """Compute the default context now (errors are logged; the next use retries)."""
        try:
            await self.default_context()
        except Exception as exc:
            logger.warning("default context not ready yet: %s", exc)

    async def _embed_default(self, n: int) -> npt.NDArray[np.float32]:
        from cde_model.context import default_context

        documents = [self._document_prefix + text for text in default_context(n)]
        encoded = await self._inference.embed_context(documents)
        logger.info("default context embedded (%d documents)", n)
        return np.ascontiguousarray(encoded.vectors, dtype=np.float32)
