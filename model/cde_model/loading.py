"""What the v1 and v2 models share: the load steps (paths, device and dtype, config,
description, weights) and stage 1 in token-budget packs."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import torch

from cde_model.batching import TokenBatch
from cde_model.checkpoint import checkpoint_paths, read_tensors
from cde_model.description import ModelDescription
from cde_model.interface import EmbeddingModel, PreparedContext, TokenArray, own_context
from cde_model.runtime import default_token_budget, resolve_device, resolve_dtype

ConfigT = TypeVar("ConfigT")
WeightsT = TypeVar("WeightsT")


@dataclass(frozen=True)
class LoadedCheckpoint(Generic[ConfigT, WeightsT]):
    """What a model class needs to build itself from a checkpoint directory."""

    config: ConfigT
    weights: WeightsT
    description: ModelDescription
    device: torch.device
    dtype: torch.dtype
    token_budget: int
    vocab_rows: int  # rows of the word embeddings: the largest valid token id + 1


@dataclass(frozen=True)
class CheckpointFormat(Generic[ConfigT, WeightsT]):
    """How one family reads its config, describes and builds its weights."""

    read_config: Callable[[Path], ConfigT]
    describe: Callable[[Path, ConfigT, str, str], ModelDescription]
    build_weights: Callable[
        [ConfigT, Mapping[str, torch.Tensor], torch.device, torch.dtype, str], WeightsT
    ]
    vocab_rows: Callable[[WeightsT], int]


def load_checkpoint(
    directory: Path,
    checkpoint_format: CheckpointFormat[ConfigT, WeightsT],
    *,
    dtype: str,
    device: str | None,
    token_budget: int | None,
) -> LoadedCheckpoint[ConfigT, WeightsT]:
    """Read, validate and place a checkpoint; a tokenizer larger than the vocabulary raises."""
    config_path, weights_path = checkpoint_paths(directory)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = checkpoint_format.read_config(config_path)
    description = checkpoint_format.describe(directory, config, dtype, str(torch_device))
    weights = checkpoint_format.build_weights(
        config, read_tensors(weights_path), torch_device, torch_dtype, str(weights_path)
    )
    rows = checkpoint_format.vocab_rows(weights)
    if description.tokenizer.vocab_size > rows:
        raise ValueError(
            f"the tokenizer of {directory} has {description.tokenizer.vocab_size} entries but "
            f"the word embeddings only {rows} rows"
        )
    budget = token_budget or default_token_budget(torch_device)
    return LoadedCheckpoint(config, weights, description, torch_device, torch_dtype, budget, rows)


class FixedRowsContext(PreparedContext):
    """A prepared context whose rows (dataset, then prompt) precede every stage-2 text."""

    @property
    @abstractmethod
    def rows_per_text(self) -> int:
        """How many fixed rows each text's stage-2 sequence carries before its tokens."""


ContextT = TypeVar("ContextT", bound=FixedRowsContext)


class CheckpointModel(EmbeddingModel, Generic[ContextT]):
    """A model built from a checkpoint directory; both stages run in token-budget packs."""

    checkpoint_format: ClassVar[CheckpointFormat[Any, Any]]
    context_kind: type[ContextT]
    _vocab_rows: int
    _token_budget: int
    _device: torch.device

    @abstractmethod
    def __init__(self, loaded: LoadedCheckpoint[Any, Any]) -> None:
        """Take the loaded weights, config and description."""

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        dtype: str = "float32",
        device: str | None = None,
        token_budget: int | None = None,
    ) -> Self:
        """Load a checkpoint directory in the family's published layout."""
        return cls(
            load_checkpoint(
                directory,
                cls.checkpoint_format,
                dtype=dtype,
                device=device,
                token_budget=token_budget,
            )
        )

    @torch.inference_mode()
    def first_stage(self, input_ids: TokenArray, attention_mask: TokenArray) -> torch.Tensor:
        return self._validated(input_ids, attention_mask).embed_packs(
            self._first_stage_pack,
            width=self.info.hidden_size,
            token_budget=self._token_budget,
            device=self._device,
        )

    @abstractmethod
    def _first_stage_pack(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalized dataset embeddings of one pack of rows."""

    @torch.inference_mode()
    def second_stage(
        self, input_ids: TokenArray, attention_mask: TokenArray, context: PreparedContext
    ) -> torch.Tensor:
        """Raw (unnormalized) contextual embeddings: float32 [B, hidden] on CPU."""
        own = own_context(context, self.context_kind, self.info)
        return self._validated(input_ids, attention_mask).embed_packs(
            lambda ids, mask: self._second_stage_pack(ids, mask, own),
            width=self.info.hidden_size,
            token_budget=self._token_budget,
            device=self._device,
            rows_per_item=own.rows_per_text,
        )

    @abstractmethod
    def _second_stage_pack(
        self, ids: torch.Tensor, mask: torch.Tensor, context: ContextT
    ) -> torch.Tensor:
        """Unnormalized contextual embeddings of one pack of rows."""

    def _validated(self, input_ids: TokenArray, attention_mask: TokenArray) -> TokenBatch:
        return TokenBatch.from_inputs(
            input_ids, attention_mask, vocab_size=self._vocab_rows, max_tokens=self.info.max_tokens
        )
