"""Token tensors of a batch: validate each request's, join them re-padded, split results back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cde_server.triton.handlers.adapter import RequestError

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class RequestTokens:
    """One request's INPUT_IDS and ATTENTION_MASK, trailing all-padding columns removed."""

    input_ids: Array  # int64 [rows, tokens]
    attention_mask: Array  # int64 [rows, tokens]

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])


def request_tokens(
    input_ids: Array, attention_mask: Array, *, max_tokens: int, vocab_size: int | None
) -> RequestTokens:
    """Validated token rows of one request; RequestError (INVALID_ARG) says what is wrong."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise RequestError(
            f"INPUT_IDS and ATTENTION_MASK must both be [rows, tokens]; "
            f"got {list(input_ids.shape)} and {list(attention_mask.shape)}"
        )
    if input_ids.shape[0] == 0:
        raise RequestError("the request has no rows")
    if not np.isin(attention_mask, (0, 1)).all():
        raise RequestError("ATTENTION_MASK values must be 0 or 1")
    used = np.flatnonzero(attention_mask.any(axis=0))
    if len(used) == 0 or not attention_mask.any(axis=1).all():
        raise RequestError("every row needs at least one token (ATTENTION_MASK all zero)")
    length = int(used[-1]) + 1
    if length > max_tokens:
        raise RequestError(f"rows have {length} token positions; at most {max_tokens} allowed")
    ids = input_ids[:, :length]
    tokens = ids[attention_mask[:, :length] == 1]
    if tokens.size and (
        tokens.min() < 0 or (vocab_size is not None and tokens.max() >= vocab_size)
    ):
        raise RequestError(f"INPUT_IDS must lie in [0, {vocab_size})")
    # Copies: torch wants writable arrays, and the inputs' shared memory is reused later.
    return RequestTokens(
        np.array(ids, dtype=np.int64), np.array(attention_mask[:, :length], dtype=np.int64)
    )


def join(parts: Sequence[RequestTokens]) -> RequestTokens:
    """All rows of `parts` in one right-padded pair of arrays (padding: id 0, mask 0)."""
    if len(parts) == 1:
        return parts[0]
    rows = sum(p.rows for p in parts)
    length = max(p.input_ids.shape[1] for p in parts)
    ids = np.zeros((rows, length), dtype=np.int64)
    mask = np.zeros((rows, length), dtype=np.int64)
    start = 0
    for part in parts:
        end = start + part.rows
        width = part.input_ids.shape[1]
        ids[start:end, :width] = part.input_ids
        mask[start:end, :width] = part.attention_mask
        start = end
    return RequestTokens(ids, mask)


def take_rows(part: RequestTokens, rows: Array) -> RequestTokens:
    """The subset `rows` of `part` (all of it when rows covers every row in order)."""
    if len(rows) == part.rows and (rows == np.arange(part.rows)).all():
        return part
    return RequestTokens(part.input_ids[rows], part.attention_mask[rows])


def split(array: Array, counts: Sequence[int]) -> list[Array]:
    """`array` cut along its first axis into pieces of `counts` rows."""
    return np.split(array, np.cumsum(counts)[:-1]) if counts else []
