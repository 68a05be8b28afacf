"""Both families' tiny checkpoints reproduce the published implementations' outputs
(golden.json), and the outputs do not depend on batching, padding, order or dtype beyond
rounding; the rest of this file is about the v1 checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cde_model import EmbeddingModel, load_model
from cde_model.prompts import DOCUMENT_PREFIX, QUERY_PREFIX
from cde_model.random_checkpoint import write_random_checkpoint
from support.golden import assert_matches_golden, first_stage, second_stage
from support.paths import TINY_CHECKPOINT, V2_TINY_CHECKPOINT

INVARIANCE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TINY_CHECKPOINT / "golden.json").read_text())
    return data


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return load_model(str(TINY_CHECKPOINT), device="cpu")


FAMILY_CHECKPOINTS = {"v1": TINY_CHECKPOINT, "v2": V2_TINY_CHECKPOINT}


@pytest.fixture(scope="module", params=sorted(FAMILY_CHECKPOINTS))
def family(request: pytest.FixtureRequest) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Each family's tiny checkpoint, loaded, with its golden.json."""
    checkpoint = FAMILY_CHECKPOINTS[request.param]
    data: dict[str, Any] = json.loads((checkpoint / "golden.json").read_text())
    return load_model(str(checkpoint), device="cpu"), data


def test_dataset_embeddings_match_golden(family: tuple[EmbeddingModel, dict[str, Any]]) -> None:
    model, golden = family
    actual = first_stage(model, golden["context_texts"])
    assert_matches_golden(actual, golden["dataset_embeddings"], golden)


def test_query_embeddings_match_golden(family: tuple[EmbeddingModel, dict[str, Any]]) -> None:
    model, golden = family
    dataset = torch.tensor(golden["dataset_embeddings"])
    actual = second_stage(model, golden["queries"], QUERY_PREFIX, dataset)
    assert_matches_golden(actual, golden["query_embeddings"], golden)


def test_document_embeddings_match_golden(family: tuple[EmbeddingModel, dict[str, Any]]) -> None:
    model, golden = family
    dataset = first_stage(model, golden["context_texts"])
    actual = second_stage(model, golden["documents"], DOCUMENT_PREFIX, dataset)
    assert_matches_golden(actual, golden["document_embeddings"], golden)


def test_alt_context_embeddings_match_golden(
    family: tuple[EmbeddingModel, dict[str, Any]],
) -> None:
    model, golden = family
    dataset = first_stage(model, golden["alt_context_texts"])
    assert_matches_golden(dataset, golden["alt_dataset_embeddings"], golden)
    queries = second_stage(model, golden["queries"], QUERY_PREFIX, dataset)
    assert_matches_golden(queries, golden["alt_query_embeddings"], golden)


def test_info_describes_the_checkpoint(model: EmbeddingModel) -> None:
    info = model.info
    assert (info.hidden_size, info.corpus_size, info.max_tokens) == (64, 16, 512)
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert len(info.fingerprint) == 64
    assert load_model(str(TINY_CHECKPOINT), device="cpu").info.fingerprint == info.fingerprint


def test_long_inputs_are_truncated_to_max_tokens(
    model: EmbeddingModel, golden: dict[str, Any]
) -> None:
    long_document = max(golden["documents"], key=len)
    ids, mask = model.tokenizer.encode([DOCUMENT_PREFIX + long_document, "short"])
    assert ids.shape == (2, 512) and ids.dtype == np.int64
    assert mask[0].sum() == 512 and ids[0, 0] == 101 and ids[0, -1] == 102
    assert mask[1].sum() == 3 and (ids[1, 3:] == 0).all()


def test_rows_longer_than_max_tokens_are_refused(model: EmbeddingModel) -> None:
    ids = np.full((1, 513), 1000, dtype=np.int64)
    with pytest.raises(ValueError, match="more than the model's 512"):
        model.first_stage(ids, np.ones_like(ids))


def test_out_of_range_token_ids_are_refused(model: EmbeddingModel) -> None:
    ids = np.array([[101, 10**6, 102]])
    with pytest.raises(ValueError, match="token ids"):
        model.first_stage(ids, np.ones_like(ids))


def test_prepare_context_needs_n_rows(model: EmbeddingModel) -> None:
    with pytest.raises(ValueError, match="needs 16 dataset embeddings, got 15"):
        model.prepare_context(torch.zeros(15, 64))
    with pytest.raises(ValueError, match=r"\[rows, 64\]"):
        model.prepare_context(torch.zeros(16, 32))
    bigger = model.prepare_context(torch.randn(40, 64))
    assert bigger.nbytes > 0


def test_extra_dataset_rows_are_ignored(model: EmbeddingModel, golden: dict[str, Any]) -> None:
    dataset = torch.tensor(golden["dataset_embeddings"])
    padded = torch.cat((dataset, torch.randn(5, 64)))
    exact = second_stage(model, golden["queries"], QUERY_PREFIX, dataset)
    assert (
        exact - second_stage(model, golden["queries"], QUERY_PREFIX, padded)
    ).abs().max() <= 1e-6


def test_a_context_from_another_model_is_refused(model: EmbeddingModel, tmp_path: Path) -> None:
    other = load_model(str(write_random_checkpoint(tmp_path, "tiny", seed=1)), device="cpu")
    context = other.prepare_context(torch.randn(16, 64))
    with pytest.raises(ValueError, match="different model"):
        model.second_stage(*model.tokenizer.encode(["x"]), context)


# ------------------------------------------------------------------- invariances (both)


def mixed_texts(golden: dict[str, Any]) -> list[str]:
    """Documents, context documents and queries with their prompts, and v2's raw texts."""
    documents = golden["documents"] + golden["context_texts"][:6]
    return (
        [DOCUMENT_PREFIX + t for t in documents]
        + [QUERY_PREFIX + q for q in golden["queries"]]
        + list(golden.get("raw_texts", []))
    )


def run_stage(
    model: EmbeddingModel, stage: str, ids: Any, mask: Any, golden: dict[str, Any]
) -> torch.Tensor:
    if stage == "first":
        return model.first_stage(ids, mask)
    context = model.prepare_context(torch.tensor(golden["dataset_embeddings"]))
    return model.second_stage(ids, mask, context)


@pytest.mark.parametrize("stage", ["first", "second"])
def test_batch_size_invariance(family: tuple[EmbeddingModel, dict[str, Any]], stage: str) -> None:
    model, golden = family
    texts = mixed_texts(golden)
    together = run_stage(model, stage, *model.tokenizer.encode(texts), golden)
    alone = torch.cat(
        [run_stage(model, stage, *model.tokenizer.encode([t]), golden) for t in texts]
    )
    assert (together - alone).abs().max() <= INVARIANCE_TOLERANCE


@pytest.mark.parametrize("stage", ["first", "second"])
def test_padding_invariance(family: tuple[EmbeddingModel, dict[str, Any]], stage: str) -> None:
    model, golden = family
    ids, mask = model.tokenizer.encode(mixed_texts(golden))
    reference = run_stage(model, stage, ids, mask, golden)
    extra = 37  # more than v2's local window: padding rows see only padding
    pad_id = model.tokenizer.pad_id
    padded_ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
    padded_mask = np.pad(mask, ((0, 0), (0, extra)), constant_values=0)
    padded = run_stage(model, stage, padded_ids, padded_mask, golden)
    assert bool(torch.isfinite(padded).all())
    assert (padded - reference).abs().max() <= INVARIANCE_TOLERANCE
    # Left padding (valid tokens at the end of each row) is read as right padding.
    order = np.argsort(mask, axis=1, kind="stable")
    left = run_stage(
        model, stage, np.take_along_axis(ids, order, 1), np.take_along_axis(mask, order, 1), golden
    )
    assert (left - reference).abs().max() <= INVARIANCE_TOLERANCE


@pytest.mark.parametrize("stage", ["first", "second"])
def test_order_invariance(family: tuple[EmbeddingModel, dict[str, Any]], stage: str) -> None:
    model, golden = family
    texts = mixed_texts(golden)
    reference = run_stage(model, stage, *model.tokenizer.encode(texts), golden)
    permutation = np.random.default_rng(0).permutation(len(texts))
    shuffled = run_stage(
        model, stage, *model.tokenizer.encode([texts[i] for i in permutation]), golden
    )
    assert (shuffled - reference[permutation]).abs().max() <= INVARIANCE_TOLERANCE


@pytest.mark.parametrize("family_name", sorted(FAMILY_CHECKPOINTS))
@pytest.mark.parametrize("stage", ["first", "second"])
def test_small_token_budget_splits_into_many_passes(family_name: str, stage: str) -> None:
    checkpoint = FAMILY_CHECKPOINTS[family_name]
    golden = json.loads((checkpoint / "golden.json").read_text())
    texts = mixed_texts(golden)
    default = load_model(str(checkpoint), device="cpu")
    tight = load_model(str(checkpoint), device="cpu", token_budget=64)
    reference = run_stage(default, stage, *default.tokenizer.encode(texts), golden)
    split = run_stage(tight, stage, *tight.tokenizer.encode(texts), golden)
    assert (split - reference).abs().max() <= INVARIANCE_TOLERANCE


def test_empty_batches(family: tuple[EmbeddingModel, dict[str, Any]]) -> None:
    model, _ = family
    ids, mask = model.tokenizer.encode([])
    assert model.first_stage(ids, mask).shape == (0, 64)
    context = model.prepare_context(torch.zeros(16, 64))
    assert model.second_stage(ids, mask, context).shape == (0, 64)


@pytest.mark.parametrize("family_name", sorted(FAMILY_CHECKPOINTS))
def test_bfloat16_is_close_to_float32(family_name: str) -> None:
    checkpoint = FAMILY_CHECKPOINTS[family_name]
    golden = json.loads((checkpoint / "golden.json").read_text())
    bf16 = load_model(str(checkpoint), dtype="bfloat16", device="cpu")
    assert bf16.info.dtype == "bfloat16"
    dataset = first_stage(bf16, golden["context_texts"])
    queries = second_stage(bf16, golden["queries"], QUERY_PREFIX, dataset)
    assert dataset.dtype == torch.float32 and queries.dtype == torch.float32
    want = np.asarray(golden["query_embeddings"])
    got = queries.numpy()
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99


# ------------------------------------------------------------------- dtype and device


def test_float16_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        load_model(str(TINY_CHECKPOINT), dtype="float16", device="cpu")


def test_unknown_dtype_and_missing_cuda_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_model(str(TINY_CHECKPOINT), dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(str(TINY_CHECKPOINT), device="cuda")
        assert load_model(str(TINY_CHECKPOINT)).info.device == "cpu"
