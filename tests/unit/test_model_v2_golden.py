"""The tiny cde-small-v2 checkpoint reproduces the published implementation's outputs
(golden.json, every key) and its instruction mask; the invariances (batching, padding, order,
token budget, bfloat16) run for both families in test_model_golden.py."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from cde_model import EmbeddingModel, load_model
from cde_model.cde_v2 import instruction_pool_mask
from cde_model.prompts import DOCUMENT_PREFIX, QUERY_PREFIX
from cde_model.tokenizer_v2 import instruction_end_id
from support.golden import assert_matches_golden, second_stage
from support.paths import TINY_CHECKPOINT, V2_GOLDEN_JSON, V2_TINY_CHECKPOINT

INVARIANCE_TOLERANCE = 1e-5
# golden.json keys and the test that checks each; a new key must be added here. The four
# embedding comparisons shared with v1 run for both families in test_model_golden.py.
GOLDEN_KEYS = {
    "about": "not compared (description)",
    "tolerance": "assert_matches_golden",
    "document_prefix": "test_prefixes_and_settings_match_golden",
    "query_prefix": "test_prefixes_and_settings_match_golden",
    "max_length": "test_prefixes_and_settings_match_golden",
    "pool_instruction_end_id": "test_prefixes_and_settings_match_golden",
    "context_texts": "test_dataset_embeddings_match_golden",
    "dataset_embeddings": "test_dataset_embeddings_match_golden",
    "queries": "test_query_embeddings_match_golden",
    "query_embeddings": "test_query_embeddings_match_golden",
    "documents": "test_document_embeddings_match_golden",
    "document_embeddings": "test_document_embeddings_match_golden",
    "alt_context_texts": "test_alt_context_embeddings_match_golden",
    "alt_dataset_embeddings": "test_alt_context_embeddings_match_golden",
    "alt_query_embeddings": "test_alt_context_embeddings_match_golden",
    "raw_texts": "test_raw_embeddings_match_golden",
    "raw_embeddings": "test_raw_embeddings_match_golden",
}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(V2_GOLDEN_JSON.read_text())
    return data


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return load_model(str(V2_TINY_CHECKPOINT), device="cpu")


def test_every_golden_key_is_checked(golden: dict[str, Any]) -> None:
    assert set(golden) == set(GOLDEN_KEYS)


def test_info_describes_the_checkpoint(model: EmbeddingModel) -> None:
    info = model.info
    assert info.family == "v2"
    assert (info.hidden_size, info.corpus_size, info.max_tokens) == (64, 16, 512)
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert len(info.fingerprint) == 64
    assert load_model(str(V2_TINY_CHECKPOINT), device="cpu").info.fingerprint == info.fingerprint
    v1 = load_model(str(TINY_CHECKPOINT), device="cpu").info
    assert v1.family == "v1" and v1.fingerprint != info.fingerprint


def test_prefixes_and_settings_match_golden(model: EmbeddingModel, golden: dict[str, Any]) -> None:
    assert (golden["document_prefix"], golden["query_prefix"]) == (DOCUMENT_PREFIX, QUERY_PREFIX)
    assert golden["max_length"] == model.info.max_tokens
    assert instruction_end_id(model.tokenizer) == golden["pool_instruction_end_id"]


def test_raw_embeddings_match_golden(model: EmbeddingModel, golden: dict[str, Any]) -> None:
    dataset = torch.tensor(golden["dataset_embeddings"])
    actual = second_stage(model, golden["raw_texts"], "", dataset)
    assert_matches_golden(actual, golden["raw_embeddings"], golden)


def test_context_order_matters(model: EmbeddingModel, golden: dict[str, Any]) -> None:
    dataset = torch.tensor(golden["dataset_embeddings"])
    reference = second_stage(model, golden["queries"], QUERY_PREFIX, dataset)
    reversed_rows = second_stage(model, golden["queries"], QUERY_PREFIX, dataset.flip(0))
    assert (reference - reversed_rows).abs().max() > 1e-3


def test_extra_dataset_rows_are_ignored_and_fewer_are_used_as_given(
    model: EmbeddingModel, golden: dict[str, Any]
) -> None:
    dataset = torch.tensor(golden["dataset_embeddings"])
    exact = second_stage(model, golden["queries"], QUERY_PREFIX, dataset)
    padded = torch.cat((dataset, torch.randn(5, 64)))
    assert (
        exact - second_stage(model, golden["queries"], QUERY_PREFIX, padded)
    ).abs().max() <= 1e-6
    fewer = second_stage(model, golden["queries"], QUERY_PREFIX, dataset[:10])
    assert fewer.shape == exact.shape and bool(torch.isfinite(fewer).all())
    assert model.prepare_context(dataset[:10]).nbytes == (10 + 8) * 64 * 4
    with pytest.raises(ValueError, match=r"\[rows, 64\]"):
        model.prepare_context(torch.zeros(16, 32))
    with pytest.raises(ValueError, match="at least one"):
        model.prepare_context(torch.zeros(0, 64))


def test_a_context_from_a_v1_model_is_refused(model: EmbeddingModel) -> None:
    v1 = load_model(str(TINY_CHECKPOINT), device="cpu")
    context = v1.prepare_context(torch.randn(16, 64))
    with pytest.raises(TypeError, match="CDEV2Context"):
        model.second_stage(*model.tokenizer.encode(["x"]), context)


# ------------------------------------------------------------------- tokenizer and truncation


def test_long_inputs_are_truncated_to_512_tokens(
    model: EmbeddingModel, golden: dict[str, Any]
) -> None:
    tokenizer = model.tokenizer
    cls_id, sep_id, pad_id = (tokenizer.token_ids(t)[0] for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert pad_id == tokenizer.pad_id != 0
    long_document = " ".join(golden["documents"]) * 20
    ids, mask = tokenizer.encode([DOCUMENT_PREFIX + long_document, "short"])
    assert ids.shape == (2, 512) and ids.dtype == np.int64
    assert mask[0].sum() == 512 and ids[0, 0] == cls_id and ids[0, -1] == sep_id
    length = int(mask[1].sum())
    assert (
        ids[1, 0] == cls_id and ids[1, length - 1] == sep_id and (ids[1, length:] == pad_id).all()
    )
    too_long = np.full((1, 513), 100, dtype=np.int64)
    with pytest.raises(ValueError, match="more than the model's 512"):
        model.first_stage(too_long, np.ones_like(too_long))


def pooled_tokens(model: EmbeddingModel, text: str) -> list[str]:
    """The tokens of `text` (as encoded, [CLS]/[SEP] included) that the stage-2 pool keeps."""
    ids, mask = model.tokenizer.encode([text])
    end_id = instruction_end_id(model.tokenizer)
    keep = instruction_pool_mask(torch.from_numpy(ids), torch.from_numpy(mask).bool(), end_id)
    tokenizer = model.tokenizer
    return [str(tokenizer.id_to_token(int(i))) for i, k in zip(ids[0], keep[0], strict=True) if k]


def tokens_of(model: EmbeddingModel, text: str) -> list[str]:
    return [str(model.tokenizer.id_to_token(i)) for i in model.tokenizer.token_ids(text)]


def test_instruction_mask_drops_the_prompt_through_its_colon(model: EmbeddingModel) -> None:
    pooled = pooled_tokens(model, "search_query: a: b")
    assert pooled == [*tokens_of(model, " a: b"), "[SEP]"]  # only the prefix's colon counts


def test_instruction_mask_without_prompt_drops_up_to_the_first_colon(
    model: EmbeddingModel,
) -> None:
    assert pooled_tokens(model, "a colon: inside") == [*tokens_of(model, " inside"), "[SEP]"]
    assert pooled_tokens(model, ": starts") == [*tokens_of(model, " starts"), "[SEP]"]


def test_instruction_mask_keeps_everything_without_a_colon(model: EmbeddingModel) -> None:
    assert pooled_tokens(model, "no colon") == ["[CLS]", *tokens_of(model, "no colon"), "[SEP]"]


def test_a_colon_merged_into_another_token_does_not_end_the_instruction(
    model: EmbeddingModel,
) -> None:
    text = "see https://example.com"
    assert ":" not in tokens_of(model, text)  # "://" is one token in the fixture's vocabulary
    assert pooled_tokens(model, text) == ["[CLS]", *tokens_of(model, text), "[SEP]"]


def test_an_empty_document_pools_the_space_and_sep(model: EmbeddingModel) -> None:
    assert pooled_tokens(model, DOCUMENT_PREFIX) == [*tokens_of(model, " "), "[SEP]"]
    context = model.prepare_context(torch.randn(16, 64))
    embedding = model.second_stage(*model.tokenizer.encode([DOCUMENT_PREFIX]), context)
    assert bool(torch.isfinite(embedding).all())
