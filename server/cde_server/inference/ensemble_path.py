"""The ensemble path: `cde_embed` and `cde_context` tokenize and run a stage inside Triton."""

from __future__ import annotations

from collections.abc import Sequence

from cde_server.inference.cache_miss import ContextPrimer
from cde_server.inference.deadlines import Deadline
from cde_server.inference.interface import ContextRef, Encoded, FloatMatrix
from cde_server.inference.tensors import (
    Infer,
    context_inputs,
    counts_and_truncation,
    each_chunk,
    float_output,
    refuse_truncated,
    text_input,
)
from cde_server.triton import protocol as tp


class EnsemblePath:
    """Embeds through Triton's ensembles, one call per chunk."""

    embed_models = (tp.EMBED_ENSEMBLE,)
    context_models = (tp.CONTEXT_ENSEMBLE,)

    def __init__(self, infer: Infer, primer: ContextPrimer) -> None:
        self._infer = infer
        self._primer = primer

    async def embed(
        self,
        texts: Sequence[str],
        context: ContextRef,
        deadline: Deadline,
        *,
        max_tokens: int,
        allow_truncation: bool,
    ) -> Encoded:
        """Second-stage rows of `texts` (Triton tokenizes, so too long ones are found after)."""
        parts = await each_chunk(
            len(texts),
            lambda s: self._embed_chunk(texts[s : s + tp.MAX_BATCH_ROWS], context, deadline),
        )
        encoded = Encoded.concat(parts)
        if not allow_truncation:
            refuse_truncated(encoded.truncated, max_tokens)
        return encoded

    async def embed_context(self, documents: Sequence[str], deadline: Deadline) -> Encoded:
        """First-stage rows of `documents`."""
        parts = await each_chunk(
            len(documents),
            lambda s: self._context_chunk(documents[s : s + tp.MAX_BATCH_ROWS], deadline),
        )
        return Encoded.concat(parts)

    async def _embed_chunk(
        self, texts: Sequence[str], context: ContextRef, deadline: Deadline
    ) -> Encoded:
        collected: dict[int, Encoded] = {}

        async def run(first: int, last: int, dataset: FloatMatrix | None) -> FloatMatrix:
            inputs = [
                text_input(list(texts[first:last])),
                *context_inputs(context.context_id, last - first, dataset),
            ]
            outputs = [tp.EMBEDDING, tp.TOKEN_COUNT, tp.TRUNCATED]
            result = await self._infer(tp.EMBED_ENSEMBLE, inputs, outputs, deadline.remaining())
            vectors = float_output(result, tp.EMBEDDING)
            collected[first] = Encoded(vectors, *counts_and_truncation(result))
            return vectors

        await self._primer.run(0, len(texts), context, run)
        return Encoded.concat([collected[k] for k in sorted(collected)])

    async def _context_chunk(self, documents: Sequence[str], deadline: Deadline) -> Encoded:
        outputs = [tp.DATASET_EMBEDDING, tp.TOKEN_COUNT, tp.TRUNCATED]
        result = await self._infer(
            tp.CONTEXT_ENSEMBLE, [text_input(list(documents))], outputs, deadline.remaining()
        )
        return Encoded(float_output(result, tp.DATASET_EMBEDDING), *counts_and_truncation(result))
