"""The two-stage embedding-model interface shared by the CDE model and the demo model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cde_model.tokenizer import TextTokenizer

IntArray = npt.NDArray[np.int64]
TokenArray = torch.Tensor | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and how it runs."""

    name: str
    fingerprint: str  # sha256 hex of config, weights and tokenizer files
    hidden_size: int
    corpus_size: int  # N: dataset embeddings the second stage wants
    max_tokens: int  # texts are truncated to this many tokens, [CLS]/[SEP] included
    dtype: str
    device: str


class PreparedContext(ABC):
    """State derived once from N dataset embeddings, reused by every second-stage call."""

    model_fingerprint: str

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Memory held by the prepared tensors (for cache accounting)."""


class EmbeddingModel(ABC):
    """A contextual embedding model: stage 1 embeds context documents, stage 2 embeds texts."""

    info: ModelInfo
    tokenizer: TextTokenizer

    @abstractmethod
    def first_stage(self, input_ids: TokenArray, attention_mask: TokenArray) -> torch.Tensor:
        """One unnormalized dataset embedding per row: float32 [B, hidden] on CPU."""

    @abstractmethod
    def prepare_context(
        self, dataset_embeddings: torch.Tensor | npt.NDArray[np.floating[Any]]
    ) -> PreparedContext:
        """Precompute what depends only on the context from its first N dataset embeddings."""

    @abstractmethod
    def second_stage(
        self, input_ids: TokenArray, attention_mask: TokenArray, context: PreparedContext
    ) -> torch.Tensor:
        """Raw (unnormalized) contextual embeddings: float32 [B, hidden] on CPU."""


def tensor_nbytes(*tensors: torch.Tensor) -> int:
    """Total storage of the given tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors)
