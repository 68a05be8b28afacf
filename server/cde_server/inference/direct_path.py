"""The direct path: tokenize, then `cde_first_stage` or `cde_second_stage`.

Texts are tokenized in the gateway when it has the served tokenizer (`LocalTokenizer`, fetched
from Triton), else by `cde_tokenize`. No ensemble overhead, truncation is checked before the
expensive stage, and a cache-miss retry does not tokenize again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from cde_server.inference.cache_miss import ContextPrimer
from cde_server.inference.deadlines import Deadline
from cde_server.inference.interface import ContextRef, Encoded, FloatMatrix
from cde_server.inference.local_tokenizer import LocalTokenizer
from cde_server.inference.tensors import (
    Infer,
    TokenizedTexts,
    context_inputs,
    counts_and_truncation,
    each_chunk,
    float_output,
    framed_tokens,
    output,
    refuse_truncated,
    text_input,
    token_inputs,
)
from cde_server.triton import protocol as tp


class DirectPath:
    """Embeds through the tokenizer model and one stage model per chunk."""

    embed_models = (tp.TOKENIZE_MODEL, tp.SECOND_STAGE_MODEL)
    context_models = (tp.TOKENIZE_MODEL, tp.FIRST_STAGE_MODEL)

    def __init__(
        self,
        infer: Infer,
        primer: ContextPrimer,
        local_tokenizer: Callable[[Deadline], Awaitable[LocalTokenizer | None]] | None = None,
    ) -> None:
        """`local_tokenizer`: the gateway's copy of the served tokenizer, if there is one (None:
        `cde_tokenize` always tokenizes)."""
        self._infer = infer
        self._primer = primer
        self._local_tokenizer = local_tokenizer

    async def tokenize(self, texts: Sequence[str], deadline: Deadline) -> TokenizedTexts:
        """Token ids of `texts`: in the gateway when it can, else by `cde_tokenize`, chunk by
        chunk."""
        local = await self._local_tokenizer(deadline) if self._local_tokenizer else None
        if local is not None:
            return await local.tokenize(texts)
        parts = await each_chunk(
            len(texts), lambda s: self._tokenize_chunk(texts[s : s + tp.MAX_BATCH_ROWS], deadline)
        )
        return TokenizedTexts.concat(parts)

    async def embed(
        self,
        texts: Sequence[str],
        context: ContextRef,
        deadline: Deadline,
        *,
        max_tokens: int,
        allow_truncation: bool,
    ) -> Encoded:
        """Second-stage rows of `texts`; too long ones are refused before the stage runs."""
        tokens = await self.tokenize(texts, deadline)
        if not allow_truncation:
            refuse_truncated(tokens.truncated, max_tokens)
        return await self._second_stage(tokens, context, deadline)

    async def embed_tokens(
        self,
        rows: Sequence[Sequence[int]],
        prefix: str,
        context: ContextRef,
        deadline: Deadline,
        *,
        max_tokens: int,
        allow_truncation: bool,
    ) -> Encoded:
        """Second-stage rows of pre-tokenized `rows` (ids without special tokens): each becomes
        [CLS] prefix tokens, its ids, [SEP], cut to max_tokens (or refused, without truncation)."""
        framing = await self.tokenize([prefix], deadline)  # [CLS] prefix tokens [SEP]
        length = int(framing.token_counts[0])
        head = [int(i) for i in framing.input_ids[0, : length - 1]]
        tail = [int(i) for i in framing.input_ids[0, length - 1 : length]]
        tokens = framed_tokens(rows, head, tail, max_tokens, allow_truncation=allow_truncation)
        return await self._second_stage(tokens, context, deadline)

    async def _second_stage(
        self, tokens: TokenizedTexts, context: ContextRef, deadline: Deadline
    ) -> Encoded:
        chunks = await each_chunk(
            tokens.rows, lambda s: self._second_stage_chunk(tokens, s, context, deadline)
        )
        return Encoded(np.concatenate(chunks), tokens.token_counts, tokens.truncated)

    async def embed_context(self, documents: Sequence[str], deadline: Deadline) -> Encoded:
        """First-stage rows of `documents`."""
        tokens = await self.tokenize(documents, deadline)
        chunks = await each_chunk(
            tokens.rows, lambda s: self._first_stage_chunk(tokens, s, deadline)
        )
        return Encoded(np.concatenate(chunks), tokens.token_counts, tokens.truncated)

    async def _tokenize_chunk(self, texts: Sequence[str], deadline: Deadline) -> TokenizedTexts:
        outputs = [tp.INPUT_IDS, tp.ATTENTION_MASK, tp.TOKEN_COUNT, tp.TRUNCATED]
        result = await self._infer(
            tp.TOKENIZE_MODEL, [text_input(list(texts))], outputs, deadline.remaining()
        )
        mask = output(result, tp.ATTENTION_MASK).astype(np.int64, copy=False)
        width = max(int(mask.sum(axis=1).max()), 1)  # trim padding added for batch-mates
        counts, truncated = counts_and_truncation(result)
        return TokenizedTexts(
            input_ids=output(result, tp.INPUT_IDS).astype(np.int64, copy=False)[:, :width],
            attention_mask=mask[:, :width],
            token_counts=counts,
            truncated=truncated,
        )

    async def _first_stage_chunk(
        self, tokens: TokenizedTexts, start: int, deadline: Deadline
    ) -> FloatMatrix:
        end = min(start + tp.MAX_BATCH_ROWS, tokens.rows)
        result = await self._infer(
            tp.FIRST_STAGE_MODEL,
            token_inputs(tokens, start, end),
            [tp.DATASET_EMBEDDING],
            deadline.remaining(),
        )
        return float_output(result, tp.DATASET_EMBEDDING)

    async def _second_stage_chunk(
        self, tokens: TokenizedTexts, start: int, context: ContextRef, deadline: Deadline
    ) -> FloatMatrix:
        end = min(start + tp.MAX_BATCH_ROWS, tokens.rows)

        async def run(first: int, last: int, dataset: FloatMatrix | None) -> FloatMatrix:
            inputs = [
                *token_inputs(tokens, first, last),
                *context_inputs(context.context_id, last - first, dataset),
            ]
            result = await self._infer(
                tp.SECOND_STAGE_MODEL, inputs, [tp.EMBEDDING], deadline.remaining()
            )
            return float_output(result, tp.EMBEDDING)

        return await self._primer.run(start, end, context, run)
