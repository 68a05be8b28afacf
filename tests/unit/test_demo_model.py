"""The offline demo model (all-MiniLM-L6-v2 with corpus centering) behind the CDE interface."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cde_model import EmbeddingModel, load_model
from cde_model.demo_corpus import DEMO_CORPUS, DEMO_QUERIES
from cde_model.encoder import build_context, encode_texts
from cde_model.prompts import DOCUMENT_PREFIX, QUERY_PREFIX

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY_CHECKPOINT = Path(
    os.environ.get(
        "CDE_TINY_CHECKPOINT",
        Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cde-tiny",
    )
)


@pytest.fixture(scope="module")
def demo() -> EmbeddingModel:
    return load_model("demo", device="cpu")


def test_info(demo: EmbeddingModel) -> None:
    info = demo.info
    assert (info.hidden_size, info.corpus_size, info.max_tokens) == (384, 64, 256)
    assert info.name == "demo-all-MiniLM-L6-v2" and len(info.fingerprint) == 64


def test_ranks_the_right_document_first(demo: EmbeddingModel) -> None:
    context = build_context(demo, list(DEMO_CORPUS))
    documents = encode_texts(demo, DEMO_CORPUS, context, prefix=DOCUMENT_PREFIX)
    queries = encode_texts(demo, [q for q, _ in DEMO_QUERIES], context, prefix=QUERY_PREFIX)
    best = (queries @ documents.T).argmax(axis=1)
    assert best.tolist() == [answer for _, answer in DEMO_QUERIES]


def test_stages_follow_the_documented_recipe(demo: EmbeddingModel) -> None:
    ids, mask = demo.tokenizer.encode(["a cat sat on the mat", "stock markets fell", ""])
    dataset = demo.first_stage(ids, mask)
    torch.testing.assert_close(dataset.norm(dim=1), torch.ones(3))
    rows = dataset[[0, 1, 2] * 22]  # 66 rows: only the first 64 count
    context = demo.prepare_context(rows)
    centered = demo.second_stage(ids, mask, context)
    torch.testing.assert_close(centered, dataset - rows[:64].mean(dim=0), atol=1e-6, rtol=0)


def test_output_depends_on_the_context(demo: EmbeddingModel) -> None:
    ids, mask = demo.tokenizer.encode(["who wrote hamlet"])
    science = build_context(demo, list(DEMO_CORPUS[:4]))
    default = build_context(demo)
    difference = demo.second_stage(ids, mask, science) - demo.second_stage(ids, mask, default)
    assert difference.abs().max() > 1e-2


def test_batch_padding_and_truncation(demo: EmbeddingModel) -> None:
    texts = [DOCUMENT_PREFIX + t for t in DEMO_CORPUS[:6]] + ["word " * 400]
    ids, mask = demo.tokenizer.encode(texts)
    assert ids.shape[1] == 256
    together = demo.first_stage(ids, mask)
    alone = torch.cat([demo.first_stage(*demo.tokenizer.encode([t])) for t in texts])
    assert (together - alone).abs().max() <= 1e-5
    padded = demo.first_stage(np.pad(ids, ((0, 0), (0, 9))), np.pad(mask, ((0, 0), (0, 9))))
    assert (padded - together).abs().max() <= 1e-5


def test_context_size_is_checked(demo: EmbeddingModel) -> None:
    with pytest.raises(ValueError, match="needs 64 dataset embeddings, got 10"):
        demo.prepare_context(torch.zeros(10, 384))


def test_contexts_do_not_cross_models(demo: EmbeddingModel) -> None:
    tiny = load_model(str(TINY_CHECKPOINT), device="cpu")
    demo_context = demo.prepare_context(torch.zeros(64, 384))
    with pytest.raises(TypeError, match="expected a CDEContext, got DemoContext"):
        tiny.second_stage(*tiny.tokenizer.encode(["x"]), demo_context)
    tiny_context = tiny.prepare_context(torch.zeros(16, 64))
    with pytest.raises(TypeError, match="expected a DemoContext"):
        demo.second_stage(*demo.tokenizer.encode(["x"]), tiny_context)
