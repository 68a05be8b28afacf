"""cde_tokenize: TEXT rows of all requests tokenized in one call, then split back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cde_server.triton.handlers.adapter import Inputs, RequestError, Result
from cde_server.triton.protocol import ATTENTION_MASK, INPUT_IDS, TEXT, TOKEN_COUNT, TRUNCATED

Array = npt.NDArray[Any]


class Tokenizer(Protocol):
    """What cde_model's tokenizer offers."""

    def encode_with_truncation(self, texts: Sequence[str]) -> tuple[Array, Array, Array]: ...


def decode_texts(array: Array) -> list[str]:
    """TEXT [rows, 1] of UTF-8 bytes as strings; RequestError if malformed."""
    if array.ndim != 2 or array.shape[1] != 1:
        raise RequestError(f"TEXT must be [rows, 1], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise RequestError("the request has no rows")
    texts = []
    for item in array[:, 0]:
        if isinstance(item, bytes):
            try:
                texts.append(item.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise RequestError(f"TEXT is not valid UTF-8: {exc}") from exc
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise RequestError("TEXT must hold strings (BYTES)")
    return texts


class TokenizeHandler:
    """Tokenizes every text of the batch at once; each request gets its rows, padded only to
    its own longest row (the batch-wide padding is trimmed), with token counts."""

    required_inputs = (TEXT,)
    optional_inputs: tuple[str, ...] = ()

    def __init__(self, tokenizer: Tokenizer, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str = "cpu") -> TokenizeHandler:
        """The tokenizer of parameters["model_path"] (a checkpoint directory or "demo"); no
        weights are loaded."""
        from cde_model.description import describe_model

        description = describe_model(parameters["model_path"])
        return cls(description.tokenizer, description.info.max_tokens)

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        results: list[Result] = []
        texts: list[str] = []
        counts: list[int] = []
        for inputs in batch:
            try:
                request_texts = decode_texts(inputs[TEXT])
            except RequestError as exc:
                results.append(exc)
                counts.append(0)
                continue
            results.append({})
            texts.extend(request_texts)
            counts.append(len(request_texts))
        if not texts:
            return results
        input_ids, attention_mask, truncated = self.tokenizer.encode_with_truncation(texts)
        start = 0
        for index, count in enumerate(counts):
            if count == 0:
                continue
            mask = attention_mask[start : start + count]
            lengths = mask.sum(axis=1)
            width = int(lengths.max())  # right padding: the longest row's length
            results[index] = {
                INPUT_IDS: np.ascontiguousarray(input_ids[start : start + count, :width]),
                ATTENTION_MASK: np.ascontiguousarray(mask[:, :width]),
                TOKEN_COUNT: lengths.astype(np.int32).reshape(-1, 1),
                TRUNCATED: truncated[start : start + count].reshape(-1, 1),
            }
            start += count
        return results

    def close(self) -> None:
        """Nothing to release."""
