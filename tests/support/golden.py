"""Comparing model outputs with a fixture's golden.json (the published code's outputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from cde_model import EmbeddingModel
from cde_model.prompts import DOCUMENT_PREFIX


def first_stage(model: EmbeddingModel, texts: list[str]) -> torch.Tensor:
    """Dataset embeddings of `texts` with the document prefix."""
    return model.first_stage(*model.tokenizer.encode([DOCUMENT_PREFIX + t for t in texts]))


def second_stage(
    model: EmbeddingModel, texts: list[str], prefix: str, dataset_embeddings: torch.Tensor
) -> torch.Tensor:
    """Embeddings of `prefix + text` conditioned on `dataset_embeddings`."""
    context = model.prepare_context(dataset_embeddings)
    return model.second_stage(*model.tokenizer.encode([prefix + t for t in texts]), context)


def assert_matches_golden(
    actual: torch.Tensor | np.ndarray[Any, Any], expected: list[list[float]], golden: dict[str, Any]
) -> None:
    """Within golden.json's tolerance: max-abs difference and smallest cosine."""
    want = np.asarray(expected, dtype=np.float64)
    got = (actual.numpy() if isinstance(actual, torch.Tensor) else actual).astype(np.float64)
    assert got.shape == want.shape
    tolerance = golden["tolerance"]
    assert np.abs(got - want).max() <= tolerance["max_abs"]
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= tolerance["min_cosine"]
