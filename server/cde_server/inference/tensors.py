"""Building Triton inputs and reading its outputs (tritonclient types, numpy arrays)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput

from cde_server.errors import InternalError, InvalidArgumentError
from cde_server.inference.interface import FloatMatrix
from cde_server.triton import protocol as tp

Infer = Callable[[str, list[InferInput], list[str], float], Awaitable[Any]]
"""One Triton call: model, inputs, output names, timeout in seconds → the result."""


@dataclass(frozen=True)
class TokenizedTexts:
    """What `cde_tokenize` returns for a list of texts, right-padded to one width."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_counts: npt.NDArray[np.int64]
    truncated: npt.NDArray[np.bool_]

    @property
    def rows(self) -> int:
        return len(self.token_counts)

    @staticmethod
    def concat(parts: list[TokenizedTexts]) -> TokenizedTexts:
        """The rows of `parts`, in order, padded to the widest."""
        width = max(p.input_ids.shape[1] for p in parts)
        return TokenizedTexts(
            input_ids=np.concatenate([_pad_to(p.input_ids, width) for p in parts]),
            attention_mask=np.concatenate([_pad_to(p.attention_mask, width) for p in parts]),
            token_counts=np.concatenate([p.token_counts for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
        )


def bytes_input(name: str, values: npt.NDArray[np.object_]) -> InferInput:
    """A BYTES input tensor."""
    tensor = InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def text_input(texts: list[str]) -> InferInput:
    """TEXT of `texts`."""
    return bytes_input(tp.TEXT, tp.text_tensor(texts))


def token_inputs(tokens: TokenizedTexts, start: int, end: int) -> list[InferInput]:
    """INPUT_IDS and ATTENTION_MASK of rows [start, end), trimmed to their longest row."""
    mask = tokens.attention_mask[start:end]
    width = max(int(mask.sum(axis=1).max()), 1)
    inputs = []
    for name, values in ((tp.INPUT_IDS, tokens.input_ids[start:end]), (tp.ATTENTION_MASK, mask)):
        block = np.ascontiguousarray(values[:, :width])
        tensor = InferInput(name, list(block.shape), "INT64")
        tensor.set_data_from_numpy(block)
        inputs.append(tensor)
    return inputs


def context_inputs(context_id: str, rows: int, dataset: FloatMatrix | None) -> list[InferInput]:
    """CONTEXT_ID for `rows` rows, plus DATASET_EMBEDDINGS when `dataset` is given."""
    inputs = [bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context_id, rows))]
    if dataset is not None:
        matrix = np.ascontiguousarray(tp.dataset_embeddings_tensor(dataset, rows))
        tensor = InferInput(tp.DATASET_EMBEDDINGS, list(matrix.shape), "FP32")
        tensor.set_data_from_numpy(matrix)
        inputs.append(tensor)
    return inputs


def output(result: Any, name: str) -> npt.NDArray[Any]:
    """Output `name` of an inference result (INTERNAL when the model left it out)."""
    values = result.as_numpy(name)
    if values is None:
        raise InternalError(f"the model returned no {name}")
    return np.asarray(values)


def float_output(result: Any, name: str) -> FloatMatrix:
    """A float32 output."""
    return output(result, name).astype(np.float32, copy=False)


def counts_and_truncation(result: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """TOKEN_COUNT and TRUNCATED of a tokenizing model's result, one value per row."""
    counts = output(result, tp.TOKEN_COUNT).reshape(-1).astype(np.int64)
    return counts, output(result, tp.TRUNCATED).reshape(-1).astype(np.bool_)


def refuse_truncated(truncated: npt.NDArray[np.bool_], max_tokens: int) -> None:
    """INVALID_ARGUMENT naming the texts longer than the model's limit (truncate=false)."""
    if not truncated.any():
        return
    indices = [int(i) for i in np.flatnonzero(truncated)]
    shown = ", ".join(str(i) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")
    raise InvalidArgumentError(
        f"{len(indices)} text(s) do not fit in the model's {max_tokens} tokens (indices {shown}) "
        "and truncate is false"
    )


def framed_tokens(
    rows: Sequence[Sequence[int]],
    head: Sequence[int],
    tail: Sequence[int],
    max_tokens: int,
    *,
    allow_truncation: bool,
) -> TokenizedTexts:
    """Rows of token ids between `head` ([CLS] and a prompt's tokens) and `tail` ([SEP]), cut
    to `max_tokens` like the tokenizer cuts texts; without truncation a row that does not fit
    is INVALID_ARGUMENT."""
    room = max_tokens - len(head) - len(tail)
    if room < 1:
        raise InvalidArgumentError(
            f"the prompt takes {len(head) + len(tail)} of the model's {max_tokens} tokens; "
            "no room is left for the input"
        )
    too_long = np.array([len(row) > room for row in rows], dtype=np.bool_)
    if not allow_truncation:
        refuse_truncated(too_long, max_tokens)
    kept = [list(row[:room]) for row in rows]
    width = len(head) + len(tail) + max((len(row) for row in kept), default=0)
    input_ids = np.zeros((len(kept), width), dtype=np.int64)
    attention_mask = np.zeros((len(kept), width), dtype=np.int64)
    counts = np.zeros(len(kept), dtype=np.int64)
    for index, row in enumerate(kept):
        framed = [*head, *row, *tail]
        input_ids[index, : len(framed)] = framed
        attention_mask[index, : len(framed)] = 1
        counts[index] = len(framed)
    return TokenizedTexts(input_ids, attention_mask, counts, counts >= max_tokens)


T = TypeVar("T")


async def each_chunk(rows: int, call: Callable[[int], Awaitable[T]]) -> list[T]:
    """`call(start)` for each chunk of at most MAX_BATCH_ROWS of `rows`, concurrently, results
    in order; the usual single chunk is awaited directly (no task: it is on every Embed's path)."""
    starts = range(0, rows, tp.MAX_BATCH_ROWS)
    if len(starts) == 1:
        return [await call(0)]
    return list(await asyncio.gather(*(call(start) for start in starts)))


def _pad_to(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    if values.shape[1] == width:
        return values
    return np.pad(values, ((0, 0), (0, width - values.shape[1])))
