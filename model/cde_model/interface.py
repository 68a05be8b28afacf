"""The two-stage embedding-model interface shared by the CDE model and the demo model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from cde_model.description import ModelSpec
from cde_model.tokenizer import TextTokenizer

__all__ = ["EmbeddingModel", "ModelSpec", "PreparedContext"]

IntArray = npt.NDArray[np.int64]
TokenArray = torch.Tensor | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


class PreparedContext(ABC):
    """State derived once from N dataset embeddings, reused by every second-stage call."""

    model_fingerprint: str

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Memory held by the prepared tensors (for cache accounting)."""


class EmbeddingModel(ABC):
    """A contextual embedding model: stage 1 embeds context documents, stage 2 embeds texts."""

    info: ModelSpec
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


ContextType = TypeVar("ContextType", bound=PreparedContext)


def context_rows(
    dataset_embeddings: torch.Tensor | npt.NDArray[np.floating[Any]],
    info: ModelSpec,
    *,
    fewer_allowed: bool = False,
) -> torch.Tensor:
    """The first N (`info.corpus_size`) dataset embeddings; a wrong width, NaN or infinite
    values raise, and so do fewer than N rows unless `fewer_allowed` (v2 uses what it gets,
    as published; at least one row)."""
    rows = torch.as_tensor(dataset_embeddings)
    if rows.dim() != 2 or rows.shape[1] != info.hidden_size:
        raise ValueError(
            f"dataset embeddings must be [rows, {info.hidden_size}], got {list(rows.shape)}"
        )
    if rows.shape[0] < 1:
        raise ValueError("the model needs at least one dataset embedding")
    if rows.shape[0] < info.corpus_size and not fewer_allowed:
        raise ValueError(
            f"the model needs {info.corpus_size} dataset embeddings, got {rows.shape[0]}"
        )
    rows = rows[: info.corpus_size]
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("dataset embeddings contain NaN or infinite values")
    return rows


def own_context(context: PreparedContext, kind: type[ContextType], info: ModelSpec) -> ContextType:
    """`context` if this model (same fingerprint) prepared it, else TypeError/ValueError."""
    if not isinstance(context, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(context).__name__}")
    if context.model_fingerprint != info.fingerprint:
        raise ValueError("the context was prepared by a different model")
    return context


def tensor_nbytes(*tensors: torch.Tensor) -> int:
    """Total storage of the given tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors)
