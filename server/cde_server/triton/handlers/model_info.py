"""cde_model_info: what the repository serves (name, family, fingerprint, sizes, vocabulary,
dtype, device kind), and on request the tokenizer itself (for gateways that tokenize)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cde_server.triton.handlers.adapter import Inputs, Result
from cde_server.triton.protocol import (
    INFO,
    REQUEST,
    TOKENIZER_FIELD,
    TOKENIZER_REQUEST,
)


def _json_tensor(value: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    return np.array([json.dumps(dict(value)).encode("utf-8")], dtype=np.object_)


class ModelInfoHandler:
    """Answers REQUEST "tokenizer" with the tokenizer, every other request with the same INFO
    JSON object."""

    required_inputs = (REQUEST,)
    optional_inputs: tuple[str, ...] = ()

    def __init__(self, info: Mapping[str, Any], tokenizer_json: str | None = None) -> None:
        self.info = _json_tensor(info)
        self.tokenizer: np.ndarray[Any, Any] | None = None
        if tokenizer_json is not None:
            self.tokenizer = _json_tensor(
                {
                    "fingerprint": info["fingerprint"],
                    "max_tokens": info["max_tokens"],
                    TOKENIZER_FIELD: tokenizer_json,
                }
            )

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, str], device: str = "cpu"
    ) -> ModelInfoHandler:
        """Describe parameters["model_path"] as served with parameters["dtype"] on
        parameters["device_kind"]; no weights are loaded."""
        from cde_model.description import describe_model

        dtype = parameters["dtype"]
        description = describe_model(parameters["model_path"])
        info = description.info
        return cls(
            {
                "name": info.name,
                "family": info.family,
                "fingerprint": info.fingerprint,
                "hidden_size": info.hidden_size,
                "corpus_size": info.corpus_size,
                "max_tokens": info.max_tokens,
                "vocab_size": description.tokenizer.vocab_size,
                "dtype": dtype,
                "device": parameters["device_kind"],
            },
            description.tokenizer.to_json(),
        )

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        return [{INFO: self._answer(inputs)} for inputs in batch]

    def _answer(self, inputs: Inputs) -> np.ndarray[Any, Any]:
        request = inputs[REQUEST].reshape(-1)
        if self.tokenizer is not None and request.size == 1 and request[0] == TOKENIZER_REQUEST:
            return self.tokenizer
        return self.info

    def close(self) -> None:
        """Nothing to release."""
