"""Context policy (exactly N documents, deterministic), prompts, and the encoder helpers."""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import pytest
from cde_model import load_model
from cde_model.context import default_context, select_context
from cde_model.encoder import build_context, embed_context_documents, encode_texts
from cde_model.prompts import DOCUMENT_PREFIX, PROMPTS, prompt_prefix
from support.paths import TINY_CHECKPOINT

DOCUMENTS = [f"document number {i}" for i in range(100)]


def test_more_documents_are_sampled_without_replacement_like_numpy() -> None:
    chosen = select_context(DOCUMENTS, 16)
    indices = np.random.default_rng(42).choice(len(DOCUMENTS), size=16, replace=False)
    assert chosen == [DOCUMENTS[i] for i in indices]
    assert len(set(chosen)) == 16
    assert select_context(DOCUMENTS, 16) == chosen
    assert select_context(DOCUMENTS, 16, seed=7) != chosen


def test_exactly_n_documents_are_kept_as_given() -> None:
    assert select_context(DOCUMENTS[:16], 16) == DOCUMENTS[:16]


@pytest.mark.parametrize(("count", "n"), [(1, 16), (3, 16), (5, 16), (15, 16), (7, 512)])
def test_fewer_documents_are_oversampled_evenly(count: int, n: int) -> None:
    documents = DOCUMENTS[:count]
    chosen = select_context(documents, n)
    assert len(chosen) == n
    counts = collections.Counter(chosen)
    assert set(counts) == set(documents)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert select_context(documents, n) == chosen


def test_no_documents_or_no_room_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one context document"):
        select_context([], 16)
    with pytest.raises(ValueError, match="at least 1"):
        select_context(DOCUMENTS, 0)


def test_default_context_is_deterministic_and_prefix_stable() -> None:
    strings = default_context(512)
    assert len(strings) == 512 and len(set(strings)) == 512
    assert all(6 <= len(s.split()) <= 16 for s in strings)
    assert default_context(16) == strings[:16]
    assert default_context(0) == []
    # Pinned: changing the generator would silently change every default context.
    assert strings[0].startswith("free got development")


def test_context_and_prompts_import_without_torch() -> None:
    code = (
        "import sys, cde_model.context, cde_model.prompts, cde_model.demo_corpus;"
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompts() -> None:
    assert prompt_prefix("query") == "search_query: "
    assert prompt_prefix("document") == DOCUMENT_PREFIX == "search_document: "
    assert set(PROMPTS) == {"query", "document", "classification", "clustering"}
    with pytest.raises(ValueError, match="query, document, classification, clustering"):
        prompt_prefix("search")


def test_repeated_context_documents_are_embedded_once_with_the_same_result() -> None:
    model = load_model(str(TINY_CHECKPOINT), device="cpu")
    documents = ["alpha beta", "gamma", "alpha beta", "", "gamma"]
    calls: list[int] = []
    embedded = embed_context_documents(model, documents, batch_size=2, progress=calls.append)
    direct = model.first_stage(*model.tokenizer.encode([DOCUMENT_PREFIX + d for d in documents]))
    assert (embedded - direct).abs().max() <= 1e-5
    assert calls == [2, 1]  # three unique documents, two per call

    context = build_context(model, documents)
    oversampled = embed_context_documents(model, select_context(documents, 16))
    expected = model.prepare_context(oversampled)
    ids, mask = model.tokenizer.encode(["search_query: x"])
    difference = model.second_stage(ids, mask, context) - model.second_stage(ids, mask, expected)
    assert difference.abs().max() <= 1e-5
    with pytest.raises(ValueError, match="at least one context document"):
        build_context(model, [])


def test_encode_texts_normalizes_and_chunks() -> None:
    model = load_model(str(TINY_CHECKPOINT), device="cpu")
    context = build_context(model)  # default context
    texts = ["one", "", "three words here", "four"]
    raw = encode_texts(model, texts, context, prefix="", normalize=False, batch_size=3)
    unit = encode_texts(model, texts, context, prefix="", batch_size=1)
    assert raw.dtype == np.float32 and raw.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert encode_texts(model, [], context, prefix="").shape == (0, 64)
