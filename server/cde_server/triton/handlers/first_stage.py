"""cde_first_stage: the token rows of all requests in one first-stage call, split back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from cde_server.triton.handlers import tokens
from cde_server.triton.handlers.adapter import (
    Inputs,
    RequestError,
    Result,
    batch_then_isolate,
    free_accelerator_memory,
    load_stage_model,
)
from cde_server.triton.protocol import ATTENTION_MASK, DATASET_EMBEDDING, INPUT_IDS

if TYPE_CHECKING:
    from cde_model import EmbeddingModel


Array = npt.NDArray[Any]


class FirstStageHandler:
    """Embeds context documents: one DATASET_EMBEDDING row per token row."""

    required_inputs = (INPUT_IDS, ATTENTION_MASK)
    optional_inputs: tuple[str, ...] = ()

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.vocab_size: int | None = getattr(model.tokenizer, "vocab_size", None)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> FirstStageHandler:
        """Load the model named by the parameters on `device`."""
        return cls(load_stage_model(parameters, device))

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        results: list[Result] = []
        parts: dict[int, tokens.RequestTokens] = {}
        for index, inputs in enumerate(batch):
            try:
                parts[index] = tokens.request_tokens(
                    inputs[INPUT_IDS],
                    inputs[ATTENTION_MASK],
                    max_tokens=self.model.info.max_tokens,
                    vocab_size=self.vocab_size,
                )
                results.append({})
            except RequestError as exc:
                results.append(exc)
        if not parts:
            return results

        def embed(indices: list[int]) -> None:
            embeddings = self._embed([parts[index] for index in indices])
            for index, rows in zip(indices, embeddings, strict=True):
                results[index] = {DATASET_EMBEDDING: rows}

        for index, error in batch_then_isolate("first stage", list(parts), embed):
            results[index] = error
        return results

    def _embed(self, parts: list[tokens.RequestTokens]) -> list[Array]:
        import torch

        joined = tokens.join(parts)
        with torch.inference_mode():
            output = self.model.first_stage(
                torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask)
            )
        array = output.detach().to("cpu", torch.float32).numpy()
        return tokens.split(array, [p.rows for p in parts])

    def close(self) -> None:
        """Drop the model and return its accelerator memory."""
        del self.model
        free_accelerator_memory()
