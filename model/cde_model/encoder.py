"""Texts → embeddings with a model: prefixes, context selection, chunking, progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from cde_model.context import DEFAULT_SEED, default_context, select_context
from cde_model.interface import EmbeddingModel, PreparedContext
from cde_model.prompts import DOCUMENT_PREFIX

Progress = Callable[[int], object]  # called with the number of texts just finished
DEFAULT_BATCH_SIZE = 64


def embed_context_documents(
    model: EmbeddingModel,
    documents: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Stage-1 dataset embeddings (float32 [len, hidden]) of documents, document prefix added.

    Repeated documents (an oversampled small corpus) are embedded once.
    """
    unique = list(dict.fromkeys(documents))
    embeddings = _run_chunked(
        [DOCUMENT_PREFIX + text for text in unique],
        lambda ids, mask: model.first_stage(ids, mask),
        model,
        batch_size,
        progress,
    )
    row_of = {text: row for row, text in enumerate(unique)}
    return embeddings[[row_of[text] for text in documents]]


def build_context(
    model: EmbeddingModel,
    documents: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> PreparedContext:
    """Prepared context from a corpus sample (exactly N via `select_context`).

    documents=None uses `default_context(N)`; an empty list raises ValueError.
    """
    corpus_size = model.info.corpus_size
    if documents is None:
        chosen = default_context(corpus_size)
    else:
        chosen = select_context(documents, corpus_size, seed=seed)
    dataset_embeddings = embed_context_documents(
        model, chosen, batch_size=batch_size, progress=progress
    )
    return model.prepare_context(dataset_embeddings)


def encode_texts(
    model: EmbeddingModel,
    texts: Sequence[str],
    context: PreparedContext,
    *,
    prefix: str,
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> npt.NDArray[np.float32]:
    """Stage-2 embeddings of `prefix + text`: float32 [len, hidden], L2-normalized by default."""
    embeddings = _run_chunked(
        [prefix + text for text in texts],
        lambda ids, mask: model.second_stage(ids, mask, context),
        model,
        batch_size,
        progress,
    )
    if normalize:
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    return embeddings.numpy().astype(np.float32, copy=False)


def _run_chunked(
    texts: list[str],
    stage: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], torch.Tensor],
    model: EmbeddingModel,
    batch_size: int,
    progress: Progress | None,
) -> torch.Tensor:
    """Tokenize and run `stage` on `batch_size` texts at a time (the model packs each call)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    parts = [torch.empty(0, model.info.hidden_size)]
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        parts.append(stage(*model.tokenizer.encode(chunk)))
        if progress is not None:
            progress(len(chunk))
    return torch.cat(parts)
