"""The python-backend handlers without Triton: batching, error isolation, the context cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cde_model import EmbeddingModel, load_model
from cde_server.triton import protocol as tp
from cde_server.triton.handlers.adapter import (
    RequestError,
    TritonAdapter,
    expand_parameter,
    model_parameters,
)
from cde_server.triton.handlers.context_cache import ContextCache
from cde_server.triton.handlers.first_stage import FirstStageHandler
from cde_server.triton.handlers.heap import HeapTrimmer
from cde_server.triton.handlers.model_info import ModelInfoHandler
from cde_server.triton.handlers.second_stage import SecondStageHandler
from cde_server.triton.handlers.tokenize import TokenizeHandler
from support.paths import TINY_CHECKPOINT as TINY
from support.paths import V2_TINY_CHECKPOINT

Array = npt.NDArray[Any]

GOLDEN = json.loads((TINY / "golden.json").read_text())
QUERIES = [GOLDEN["query_prefix"] + q for q in GOLDEN["queries"]]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return load_model(str(TINY), device="cpu")


@pytest.fixture(scope="module")
def dataset(model: EmbeddingModel) -> Array:
    ids, mask = model.tokenizer.encode(
        [GOLDEN["document_prefix"] + t for t in GOLDEN["context_texts"]]
    )
    return np.asarray(model.first_stage(ids, mask).numpy())


def token_inputs(model: EmbeddingModel, texts: list[str], pad_to: int = 0) -> dict[str, Array]:
    ids, mask = model.tokenizer.encode(texts)
    extra = max(0, pad_to - ids.shape[1])
    return {
        tp.INPUT_IDS: np.pad(ids, ((0, 0), (0, extra))),
        tp.ATTENTION_MASK: np.pad(mask, ((0, 0), (0, extra))),
    }


def second_inputs(
    model: EmbeddingModel, texts: list[str], dataset: Array, attach: bool = False
) -> dict[str, Array]:
    inputs = token_inputs(model, texts, pad_to=40)
    inputs[tp.CONTEXT_ID] = tp.context_id_tensor(tp.context_id(dataset), len(texts))
    if attach:
        inputs[tp.DATASET_EMBEDDINGS] = np.ascontiguousarray(
            tp.dataset_embeddings_tensor(dataset, len(texts))
        )
    return inputs


def reference(model: EmbeddingModel, texts: list[str], dataset: Array) -> Array:
    ids, mask = model.tokenizer.encode(texts)
    return np.asarray(model.second_stage(ids, mask, model.prepare_context(dataset)).numpy())


# --- parameters and cache ----------------------------------------------------------------------
def test_expand_parameter() -> None:
    env = {"CDE_MODEL": "/m", "EMPTY": ""}
    assert expand_parameter("${CDE_MODEL}", env) == "/m"
    assert expand_parameter("${CDE_DTYPE:-float32}", env) == "float32"
    assert expand_parameter("${EMPTY:-x}", env) == "x"
    assert expand_parameter("plain", env) == "plain"
    with pytest.raises(KeyError, match="CDE_MODEL"):
        expand_parameter("${CDE_MODEL}", {})
    config = {"parameters": {"model_path": {"string_value": "${CDE_MODEL}"}}}
    assert model_parameters({"model_config": json.dumps(config)}, env) == {"model_path": "/m"}


@dataclass
class Blob:
    nbytes: int


def test_context_cache_is_lru_by_bytes() -> None:
    cache: ContextCache[Blob] = ContextCache(100)
    assert cache.put("a", Blob(40)) and cache.put("b", Blob(40))
    assert cache.get("a") is not None  # a is now the most recent
    assert cache.put("c", Blob(40))  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 80
    assert not cache.put("huge", Blob(101))
    assert "huge" not in cache and cache.nbytes == 80


def test_context_id_is_content_hash() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert tp.context_id(matrix) == tp.context_id(matrix.astype(np.float64))
    assert len(tp.context_id(matrix)) == tp.CONTEXT_ID_LENGTH
    assert tp.context_id(matrix) != tp.context_id(matrix[:2])


# --- handlers ----------------------------------------------------------------------------------
def test_tokenize_splits_and_trims_per_request(model: EmbeddingModel) -> None:
    handler = TokenizeHandler(model.tokenizer, model.info.max_tokens)
    batch = [{tp.TEXT: tp.text_tensor(["a"])}, {tp.TEXT: tp.text_tensor(QUERIES)}]
    bad = {tp.TEXT: np.array([[b"\xff"]], dtype=object)}
    first, second, error = handler.run([*batch, bad])
    assert isinstance(error, RequestError) and error.code == "INVALID_ARG"
    assert isinstance(first, dict) and isinstance(second, dict)
    ids, mask = model.tokenizer.encode(QUERIES)
    np.testing.assert_array_equal(second[tp.INPUT_IDS], ids)
    np.testing.assert_array_equal(second[tp.TOKEN_COUNT].ravel(), mask.sum(1))
    assert first[tp.INPUT_IDS].shape == (1, 3)  # not padded to its batch-mates


def test_first_stage_batches_requests_of_different_lengths(
    model: EmbeddingModel, dataset: Array
) -> None:
    handler = FirstStageHandler(model)
    texts = [GOLDEN["document_prefix"] + t for t in GOLDEN["context_texts"]]
    batch = [token_inputs(model, texts[:3]), token_inputs(model, texts[3:4], pad_to=50)]
    batch.append(token_inputs(model, texts[4:]))
    results = handler.run(batch)
    joined = np.concatenate([r[tp.DATASET_EMBEDDING] for r in results if isinstance(r, dict)])
    np.testing.assert_allclose(joined, dataset, atol=1e-5)


def test_second_stage_groups_contexts_and_keeps_order(
    model: EmbeddingModel, dataset: Array
) -> None:
    other = dataset[::-1].copy()
    handler = SecondStageHandler(model, cache_bytes=1 << 20)
    fill = handler.run([second_inputs(model, QUERIES[:1], dataset, attach=True)])
    assert isinstance(fill[0], dict)
    mixed = second_inputs(model, QUERIES[:2], dataset)
    mixed[tp.CONTEXT_ID] = np.array(
        [[tp.context_id(other).encode()], [tp.context_id(dataset).encode()]], dtype=object
    )
    batch = [
        second_inputs(model, QUERIES[1:3], dataset),
        second_inputs(model, QUERIES[:1], other, attach=True),  # fills `other` for `mixed`
        mixed,
    ]
    first, second, third = handler.run(batch)
    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(third, dict)
    np.testing.assert_allclose(
        first[tp.EMBEDDING], reference(model, QUERIES[1:3], dataset), atol=1e-5
    )
    np.testing.assert_allclose(
        second[tp.EMBEDDING], reference(model, QUERIES[:1], other), atol=1e-5
    )
    expected = [reference(model, QUERIES[:1], other)[0], reference(model, QUERIES[1:2], dataset)[0]]
    np.testing.assert_allclose(third[tp.EMBEDDING], np.stack(expected), atol=1e-5)


def test_cache_miss_fill_hit_and_eviction(model: EmbeddingModel, dataset: Array) -> None:
    one_context = model.prepare_context(dataset).nbytes
    handler = SecondStageHandler(model, cache_bytes=one_context)
    (miss,) = handler.run([second_inputs(model, QUERIES, dataset)])
    assert isinstance(miss, RequestError) and miss.code == "NOT_FOUND"
    assert tp.is_context_not_cached(miss.message)
    assert isinstance(handler.run([second_inputs(model, QUERIES, dataset, attach=True)])[0], dict)
    assert isinstance(handler.run([second_inputs(model, QUERIES, dataset)])[0], dict)
    other = dataset * 2
    assert isinstance(handler.run([second_inputs(model, QUERIES, other, attach=True)])[0], dict)
    (evicted,) = handler.run([second_inputs(model, QUERIES, dataset)])
    assert isinstance(evicted, RequestError) and evicted.code == "NOT_FOUND"


def test_context_larger_than_budget_is_used_but_not_cached(
    model: EmbeddingModel, dataset: Array
) -> None:
    handler = SecondStageHandler(model, cache_bytes=1)
    (result,) = handler.run([second_inputs(model, QUERIES, dataset, attach=True)])
    assert isinstance(result, dict) and len(handler.cache) == 0


class FailingModel:
    """Delegates to a real model but fails any call that contains token id `poison`."""

    def __init__(self, model: EmbeddingModel, poison: int) -> None:
        self._model = model
        self._poison = poison
        self.info = model.info
        self.tokenizer = model.tokenizer
        self.calls = 0

    def _check(self, ids: torch.Tensor) -> None:
        self.calls += 1
        if bool((ids == self._poison).any()):
            raise RuntimeError("poisoned row")

    def first_stage(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._check(ids)
        result: torch.Tensor = self._model.first_stage(ids, mask)
        return result

    def prepare_context(self, embeddings: Any) -> Any:
        return self._model.prepare_context(embeddings)

    def second_stage(self, ids: torch.Tensor, mask: torch.Tensor, context: Any) -> torch.Tensor:
        self._check(ids)
        result: torch.Tensor = self._model.second_stage(ids, mask, context)
        return result


def test_model_failure_fails_only_the_request_that_causes_it(
    model: EmbeddingModel, dataset: Array
) -> None:
    poison = int(model.tokenizer.encode(["zebra"])[0][0, 1])
    failing = cast("EmbeddingModel", FailingModel(model, poison))
    handler = SecondStageHandler(failing, cache_bytes=1 << 20)
    good = second_inputs(model, QUERIES[:2], dataset, attach=True)
    bad = second_inputs(model, ["zebra"], dataset, attach=True)
    results = handler.run([good, bad, second_inputs(model, QUERIES[2:], dataset, attach=True)])
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    assert isinstance(results[1], RequestError) and results[1].code == "INTERNAL"
    assert "poisoned row" in results[1].message
    first = FirstStageHandler(failing)
    texts = token_inputs(model, ["search_document: ok"]), token_inputs(model, ["zebra"])
    ok, failed = first.run(list(texts))
    assert isinstance(ok, dict) and isinstance(failed, RequestError)


# --- adapter -----------------------------------------------------------------------------------
class FakeTensor:
    def __init__(self, name: str, array: Array) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> Array:
        return self.array


class FakeError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, CANCELLED = range(6)

    def __init__(self, message: str, code: int) -> None:
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class FakeRequest:
    def __init__(self, inputs: dict[str, Array], cancelled: bool = False) -> None:
        self.inputs, self.cancelled = inputs, cancelled

    def is_cancelled(self) -> bool:
        return self.cancelled


FAKE_PB_UTILS = SimpleNamespace(
    Tensor=FakeTensor,
    TritonError=FakeError,
    InferenceResponse=FakeResponse,
    get_input_tensor_by_name=lambda request, name: (
        FakeTensor(name, request.inputs[name]) if name in request.inputs else None
    ),
)


def test_adapter_answers_every_request_and_never_raises(
    model: EmbeddingModel, dataset: Array
) -> None:
    adapter = TritonAdapter(FAKE_PB_UTILS, SecondStageHandler(model, 1 << 20), "cde_second_stage")
    requests = [
        FakeRequest(second_inputs(model, QUERIES, dataset, attach=True)),
        FakeRequest({tp.INPUT_IDS: np.zeros((1, 2), dtype=np.int64)}),  # CONTEXT_ID missing
        FakeRequest(second_inputs(model, QUERIES, dataset), cancelled=True),
        FakeRequest(second_inputs(model, QUERIES[:1], dataset)),
    ]
    first, missing, cancelled, last = adapter.execute(requests)
    assert first.error is None and first.outputs[tp.EMBEDDING].shape == (4, model.info.hidden_size)
    assert missing.error.code == FakeError.INVALID_ARG
    assert cancelled.error.code == FakeError.CANCELLED
    assert last.error is None

    class Broken:
        required_inputs: tuple[str, ...] = (tp.TEXT,)
        optional_inputs: tuple[str, ...] = ()

        def run(self, batch: Any) -> Any:
            raise RuntimeError("boom")

        def close(self) -> None:
            pass

    broken = TritonAdapter(FAKE_PB_UTILS, Broken(), "broken")
    responses = broken.execute([FakeRequest({tp.TEXT: tp.text_tensor(["x"])})] * 2)
    assert [r.error.code for r in responses] == [FakeError.INTERNAL] * 2
    assert "boom" in responses[0].error.message


def test_heap_trimmer_trims_at_most_once_per_interval() -> None:
    now = [0.0]
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = HeapTrimmer(1.0, trim=trim, clock=lambda: now[0])
    for step in range(10):  # 0.0 .. 2.25 s
        now[0] = step * 0.25
        trimmer.after_batch()
    assert calls == [0, 0]
    assert HeapTrimmer().available  # glibc here: the real malloc_trim is found and callable
    HeapTrimmer(0.0).after_batch()


@pytest.mark.parametrize(
    ("model_path", "family"), [(str(TINY), "v1"), (str(V2_TINY_CHECKPOINT), "v2"), ("demo", "demo")]
)
def test_model_info_reports_the_family(model_path: str, family: str) -> None:
    from cde_server.inference.interface import ServedModelInfo

    handler = ModelInfoHandler.from_parameters(
        {"model_path": model_path, "dtype": "float32", "device_kind": "cpu"}
    )
    [result] = handler.run([{tp.REQUEST: np.array([b"info"], dtype=np.object_)}])
    assert isinstance(result, dict)
    info = ServedModelInfo.from_json(result[tp.INFO][0])
    assert info.family == family
    older = {k: v for k, v in json.loads(result[tp.INFO][0]).items() if k != "family"}
    assert ServedModelInfo.from_json(json.dumps(older).encode()).family == ""  # older repository
