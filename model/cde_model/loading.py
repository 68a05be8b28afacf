"""The load steps both families share: paths, device and dtype, config, description, weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from cde_model.checkpoint import checkpoint_paths, read_tensors
from cde_model.description import ModelDescription
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


def load_checkpoint(
    directory: Path,
    *,
    read_config: Callable[[Path], ConfigT],
    describe: Callable[[Path, ConfigT, str, str], ModelDescription],
    build_weights: Callable[
        [ConfigT, Mapping[str, torch.Tensor], torch.device, torch.dtype, str], WeightsT
    ],
    vocab_rows: Callable[[WeightsT], int],
    dtype: str,
    device: str | None,
    token_budget: int | None,
) -> LoadedCheckpoint[ConfigT, WeightsT]:
    """Read, validate and place a checkpoint; a tokenizer larger than the vocabulary raises."""
    config_path, weights_path = checkpoint_paths(directory)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = read_config(config_path)
    description = describe(directory, config, dtype, str(torch_device))
    weights = build_weights(
        config, read_tensors(weights_path), torch_device, torch_dtype, str(weights_path)
    )
    rows = vocab_rows(weights)
    if description.tokenizer.vocab_size > rows:
        raise ValueError(
            f"the tokenizer of {directory} has {description.tokenizer.vocab_size} entries but "
            f"the word embeddings only {rows} rows"
        )
    budget = token_budget or default_token_budget(torch_device)
    return LoadedCheckpoint(config, weights, description, torch_device, torch_dtype, budget)
