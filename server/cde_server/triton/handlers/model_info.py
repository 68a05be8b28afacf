"""cde_model_info: what the repository serves (name, family, fingerprint, sizes, vocabulary,
dtype, device kind)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cde_server.triton.handlers.adapter import Inputs, Result
from cde_server.triton.protocol import INFO, REQUEST


class ModelInfoHandler:
    """Answers every request with the same INFO JSON object."""

    required_inputs = (REQUEST,)
    optional_inputs: tuple[str, ...] = ()

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = np.array([json.dumps(dict(info)).encode("utf-8")], dtype=np.object_)

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
            }
        )

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        return [{INFO: self.info} for _ in batch]

    def close(self) -> None:
        """Nothing to release."""
