"""Tokenizing in the gateway with the served model's own tokenizer (Rust `tokenizers`, no torch).

`cde_model_info` hands out the tokenizer.json text that `cde_tokenize` runs (REQUEST
"tokenizer"); `LocalTokenizer` rebuilds it with the same truncation and padding, so its ids are
the stub's ids, and the direct path then needs one Triton call per chunk instead of two.

Small inputs are tokenized on the event loop (tens of microseconds: a thread hop costs more);
larger ones go to a worker thread in slices of at most `SLICE_CHARS`, and `tokenizers`
releases the GIL while it works, so one huge request neither blocks the loop nor keeps other
tenants' small calls waiting behind it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from cde_server.inference.tensors import TokenizedTexts
from cde_server.triton import protocol as tp

INLINE_CHARS = 4 * 1024
"""Requests of up to this many characters of text are tokenized on the event loop."""
SLICE_CHARS = 256 * 1024
"""Characters one worker-thread step tokenizes at most (a longer text is a step of its own)."""


class LocalTokenizer:
    """The served model's tokenizer, producing what `cde_tokenize` produces."""

    def __init__(self, tokenizer_json: str, max_tokens: int, fingerprint: str) -> None:
        tokenizer = Tokenizer.from_str(tokenizer_json)
        pad = tokenizer.padding  # the stub's own padding travels in the JSON
        if pad is None:
            raise ValueError("the served tokenizer has no padding settings")
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(
            direction="right", pad_id=pad["pad_id"], pad_token=pad["pad_token"]
        )
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.fingerprint = fingerprint

    @classmethod
    def from_info(cls, info: bytes) -> LocalTokenizer | None:
        """From `cde_model_info`'s answer to REQUEST "tokenizer"; None when the repository
        predates it (the answer holds no tokenizer)."""
        fields = json.loads(info)
        text = fields.get(tp.TOKENIZER_FIELD)
        if not isinstance(text, str):
            return None
        return cls(text, int(fields["max_tokens"]), str(fields["fingerprint"]))

    def encode(self, texts: Sequence[str]) -> TokenizedTexts:
        """Ids, mask, token counts and truncation of `texts` (right-padded to the longest)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return TokenizedTexts(
            input_ids=np.array([e.ids for e in encodings], dtype=np.int64),
            attention_mask=mask,
            token_counts=mask.sum(axis=1),
            truncated=np.array([bool(e.overflowing) for e in encodings], dtype=np.bool_),
        )

    async def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        """`encode`, inline when small, else slice by slice in a worker thread."""
        sizes = [len(text) for text in texts]
        if sum(sizes) <= INLINE_CHARS:
            return self.encode(texts)
        parts = []
        for start, end in _slices(sizes, SLICE_CHARS):
            parts.append(await asyncio.to_thread(self.encode, texts[start:end]))
        return TokenizedTexts.concat(parts)


def _slices(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive items whose sizes sum to at most `budget` (an item
    larger than the budget is a run of its own)."""
    runs: list[tuple[int, int]] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and used + size > budget:
            runs.append((start, index))
            start, used = index, 0
        used += size
    if sizes:
        runs.append((start, len(sizes)))
    return runs
