"""The model repository on a real tritonserver (CPU, tiny checkpoint): golden outputs,
batching, the context-cache protocol, and bad inputs."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from cde_server.triton import protocol as tp
from support.paths import GOLDEN_JSON
from tritonclient.utils import InferenceServerException

Array = npt.NDArray[Any]
GOLDEN = json.loads(GOLDEN_JSON.read_text())
DOC = GOLDEN["document_prefix"]
QUERY = GOLDEN["query_prefix"]
N, HIDDEN = 16, 64


@pytest.fixture(scope="module")
def client(triton_grpc_url: str) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton_grpc_url) as c:
        yield c


def assert_close(actual: Array, expected: Any) -> None:
    """Within golden.json's tolerance: max abs difference and per-row cosine."""
    wanted = np.asarray(expected, dtype=np.float32)
    assert actual.shape == wanted.shape
    assert np.abs(actual - wanted).max() <= GOLDEN["tolerance"]["max_abs"]
    cosine = (
        (actual * wanted).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(wanted, axis=1)
    )
    assert cosine.min() >= GOLDEN["tolerance"]["min_cosine"]


def bytes_input(name: str, values: Array) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def array_input(name: str, values: Array, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), dtype)
    tensor.set_data_from_numpy(values)
    return tensor


def embed_inputs(
    texts: Sequence[str], context: str, dataset: Array | None = None
) -> list[grpcclient.InferInput]:
    inputs = [
        bytes_input(tp.TEXT, tp.text_tensor(texts)),
        bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, len(texts))),
    ]
    if dataset is not None:
        matrix = np.ascontiguousarray(tp.dataset_embeddings_tensor(dataset, len(texts)))
        inputs.append(array_input(tp.DATASET_EMBEDDINGS, matrix, "FP32"))
    return inputs


def context_embeddings(client: grpcclient.InferenceServerClient, texts: Sequence[str]) -> Array:
    result = client.infer(tp.CONTEXT_ENSEMBLE, [bytes_input(tp.TEXT, tp.text_tensor(texts))])
    return np.asarray(result.as_numpy(tp.DATASET_EMBEDDING))


def embed(
    client: grpcclient.InferenceServerClient,
    texts: Sequence[str],
    dataset: Array,
    *,
    attach: bool = False,
) -> Array:
    """cde_embed of `texts`; with attach=False a miss is answered by resending the embeddings."""
    context = tp.context_id(dataset)
    try:
        result = client.infer(
            tp.EMBED_ENSEMBLE, embed_inputs(texts, context, dataset if attach else None)
        )
    except InferenceServerException as exc:
        if attach or not tp.is_context_not_cached(exc.message() or ""):
            raise
        result = client.infer(tp.EMBED_ENSEMBLE, embed_inputs(texts, context, dataset))
    return np.asarray(result.as_numpy(tp.EMBEDDING))


def tokenize(client: grpcclient.InferenceServerClient, texts: Sequence[str]) -> tuple[Array, Array]:
    result = client.infer(tp.TOKENIZE_MODEL, [bytes_input(tp.TEXT, tp.text_tensor(texts))])
    return np.asarray(result.as_numpy(tp.INPUT_IDS)), np.asarray(result.as_numpy(tp.ATTENTION_MASK))


def expect_error(
    client: grpcclient.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput]
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs)
    return caught.value


@pytest.fixture(scope="module")
def golden_dataset(client: grpcclient.InferenceServerClient) -> Array:
    return context_embeddings(client, [DOC + t for t in GOLDEN["context_texts"]])


# --- golden outputs ---------------------------------------------------------------------------
def test_context_ensemble_reproduces_golden(golden_dataset: Array) -> None:
    assert_close(golden_dataset, GOLDEN["dataset_embeddings"])


def test_embed_ensemble_reproduces_golden(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    queries = embed(client, [QUERY + t for t in GOLDEN["queries"]], golden_dataset)
    documents = embed(client, [DOC + t for t in GOLDEN["documents"]], golden_dataset)
    assert_close(queries, GOLDEN["query_embeddings"])
    assert_close(documents, GOLDEN["document_embeddings"])


def test_alternative_context_and_mixed_contexts_in_one_request(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    alt_dataset = context_embeddings(client, [DOC + t for t in GOLDEN["alt_context_texts"]])
    assert_close(alt_dataset, GOLDEN["alt_dataset_embeddings"])
    queries = [QUERY + t for t in GOLDEN["queries"]]
    assert_close(embed(client, queries, alt_dataset), GOLDEN["alt_query_embeddings"])
    # Direct second stage, rows alternating between the two (now cached) contexts.
    ids, mask = tokenize(client, queries + queries)
    contexts = [tp.context_id(golden_dataset)] * 4 + [tp.context_id(alt_dataset)] * 4
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    result = client.infer(
        tp.SECOND_STAGE_MODEL,
        [
            array_input(tp.INPUT_IDS, ids[order], "INT64"),
            array_input(tp.ATTENTION_MASK, mask[order], "INT64"),
            bytes_input(
                tp.CONTEXT_ID, np.array([[contexts[i].encode()] for i in order], dtype=object)
            ),
        ],
    )
    rows = np.asarray(result.as_numpy(tp.EMBEDDING))
    expected = np.concatenate([GOLDEN["query_embeddings"], GOLDEN["alt_query_embeddings"]])
    assert_close(rows, expected[order])


def test_token_counts_and_model_info(client: grpcclient.InferenceServerClient) -> None:
    long_text = "word " * 600
    result = client.infer(
        tp.TOKENIZE_MODEL, [bytes_input(tp.TEXT, tp.text_tensor(["", "hello world", long_text]))]
    )
    counts = np.asarray(result.as_numpy(tp.TOKEN_COUNT)).ravel()
    assert counts.tolist() == [2, 4, 512]
    assert np.asarray(result.as_numpy(tp.TRUNCATED)).ravel().tolist() == [False, False, True]
    assert np.asarray(result.as_numpy(tp.INPUT_IDS)).shape == (3, 512)
    request = bytes_input(tp.REQUEST, np.array([b"info"], dtype=object))
    info = json.loads(client.infer(tp.MODEL_INFO_MODEL, [request]).as_numpy(tp.INFO)[0])
    assert info["name"] == "cde-tiny"
    assert (info["hidden_size"], info["corpus_size"], info["max_tokens"]) == (HIDDEN, N, 512)
    assert (info["dtype"], info["device"]) == ("float32", "cpu")


# --- batching ---------------------------------------------------------------------------------
def statistics(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def statistics_after(
    client: grpcclient.InferenceServerClient, model: str, inferences: int, timeout: float = 10.0
) -> tuple[int, int]:
    """Statistics once they count `inferences`: the python backend reports a batch's
    statistics after sending its responses, so a client can see its answers first."""
    deadline = time.monotonic() + timeout
    counts = statistics(client, model)
    while counts[0] < inferences and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = statistics(client, model)
    return counts


def fire(
    client: grpcclient.InferenceServerClient,
    model: str,
    requests: list[list[grpcclient.InferInput]],
) -> list[Any]:
    """Send all requests at once (async); results or exceptions in request order."""
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for index, inputs in enumerate(requests):
        client.async_infer(
            model, inputs, lambda result, error, i=index: answers.put((i, result, error))
        )
    collected: dict[int, Any] = {}
    for _ in requests:
        index, result, error = answers.get(timeout=120)
        collected[index] = error if error is not None else result
    return [collected[i] for i in range(len(requests))]


def test_concurrent_requests_are_batched_and_unchanged(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    texts = [QUERY + t for t in GOLDEN["queries"]] + [DOC + t for t in GOLDEN["documents"]]
    expected = np.concatenate([GOLDEN["query_embeddings"], GOLDEN["document_embeddings"]])
    embed(client, texts[:1], golden_dataset)  # cache the context
    context = tp.context_id(golden_dataset)
    before = {m: statistics(client, m) for m in (tp.TOKENIZE_MODEL, tp.SECOND_STAGE_MODEL)}
    picks = [i % len(texts) for i in range(48)]
    results = fire(client, tp.EMBED_ENSEMBLE, [embed_inputs([texts[i]], context) for i in picks])
    for pick, result in zip(picks, results, strict=True):
        assert not isinstance(result, Exception), result
        assert_close(np.asarray(result.as_numpy(tp.EMBEDDING)), expected[pick : pick + 1])
    for model, (inferences_before, executions_before) in before.items():
        inferences, executions = statistics_after(client, model, inferences_before + len(picks))
        # >=: other clients of the session's Triton (a gateway's checks) may add a few
        assert inferences - inferences_before >= len(picks), model
        assert executions - executions_before < inferences - inferences_before, model


def test_bad_request_does_not_fail_its_batch_mates(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    queries = [QUERY + t for t in GOLDEN["queries"]]
    embed(client, queries[:1], golden_dataset)
    ids, mask = tokenize(client, queries)
    context = tp.context_id(golden_dataset)

    def request(row: int, bad: bool) -> list[grpcclient.InferInput]:
        row_ids = ids[row : row + 1].copy()
        if bad:
            row_ids[0, 1] = 10**9  # outside the vocabulary
        return [
            array_input(tp.INPUT_IDS, row_ids, "INT64"),
            array_input(tp.ATTENTION_MASK, mask[row : row + 1], "INT64"),
            bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, 1)),
        ]

    plan = [(i % 4, i % 8 == 3) for i in range(24)]
    results = fire(client, tp.SECOND_STAGE_MODEL, [request(row, bad) for row, bad in plan])
    for (row, bad), result in zip(plan, results, strict=True):
        if bad:
            assert isinstance(result, InferenceServerException)
            assert "INVALID_ARGUMENT" in str(result.status())
        else:
            assert not isinstance(result, Exception), result
            embedding = np.asarray(result.as_numpy(tp.EMBEDDING))
            assert_close(embedding, [GOLDEN["query_embeddings"][row]])


# --- context cache protocol -------------------------------------------------------------------
def test_missing_context_protocol(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    dataset = rng.standard_normal((N, HIDDEN)).astype(np.float32)
    context = tp.context_id(dataset)
    texts = [QUERY + "protocol check", QUERY + "second row"]
    miss = expect_error(client, tp.EMBED_ENSEMBLE, embed_inputs(texts, context))
    assert "NOT_FOUND" in str(miss.status())
    assert tp.is_context_not_cached(miss.message() or "")
    filled = client.infer(tp.EMBED_ENSEMBLE, embed_inputs(texts, context, dataset))
    hit = client.infer(tp.EMBED_ENSEMBLE, embed_inputs(texts, context))
    np.testing.assert_array_equal(filled.as_numpy(tp.EMBEDDING), hit.as_numpy(tp.EMBEDDING))
    # Direct second stage shares the same cache.
    ids, mask = tokenize(client, texts)
    direct = client.infer(
        tp.SECOND_STAGE_MODEL,
        [
            array_input(tp.INPUT_IDS, ids, "INT64"),
            array_input(tp.ATTENTION_MASK, mask, "INT64"),
            bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, 2)),
        ],
    )
    np.testing.assert_allclose(direct.as_numpy(tp.EMBEDDING), hit.as_numpy(tp.EMBEDDING), atol=1e-6)


# --- bad inputs -------------------------------------------------------------------------------
def bad_cases(
    golden_dataset: Array,
) -> list[tuple[str, str, list[grpcclient.InferInput], str]]:
    context = tp.context_id(golden_dataset)
    text = tp.text_tensor([QUERY + "hello"])
    ids = np.array([[101, 7592, 102]], dtype=np.int64)
    mask = np.ones_like(ids)

    def second(ids_: Array, mask_: Array, ctx: Array) -> list[grpcclient.InferInput]:
        return [
            array_input(tp.INPUT_IDS, ids_, "INT64"),
            array_input(tp.ATTENTION_MASK, mask_, "INT64"),
            bytes_input(tp.CONTEXT_ID, ctx),
        ]

    short = golden_dataset[: N - 1]
    return [
        (
            "wrong dtype",
            tp.EMBED_ENSEMBLE,
            [
                array_input(tp.TEXT, np.array([[1]], dtype=np.int32), "INT32"),
                bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, 1)),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "wrong shape",
            tp.CONTEXT_ENSEMBLE,
            [
                bytes_input(tp.TEXT, np.array([[b"a", b"b"]], dtype=object)),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "no rows",
            tp.CONTEXT_ENSEMBLE,
            [
                bytes_input(tp.TEXT, np.zeros((0, 1), dtype=object)),
            ],
            "",
        ),
        (
            "invalid utf-8",
            tp.CONTEXT_ENSEMBLE,
            [
                bytes_input(tp.TEXT, np.array([[b"\xff\xfe"]], dtype=object)),
            ],
            "INVALID_ARGUMENT",
        ),
        ("missing CONTEXT_ID", tp.EMBED_ENSEMBLE, [bytes_input(tp.TEXT, text)], "INVALID_ARGUMENT"),
        (
            "malformed CONTEXT_ID",
            tp.EMBED_ENSEMBLE,
            [
                bytes_input(tp.TEXT, text),
                bytes_input(tp.CONTEXT_ID, tp.context_id_tensor("not-a-hash", 1)),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "N-1 dataset rows",
            tp.EMBED_ENSEMBLE,
            [
                bytes_input(tp.TEXT, text),
                bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(tp.context_id(short), 1)),
                array_input(tp.DATASET_EMBEDDINGS, short[None], "FP32"),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "CONTEXT_ID not the embeddings' hash",
            tp.EMBED_ENSEMBLE,
            [
                bytes_input(tp.TEXT, text),
                bytes_input(tp.CONTEXT_ID, tp.context_id_tensor("0" * 32, 1)),
                array_input(tp.DATASET_EMBEDDINGS, golden_dataset[None], "FP32"),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "token ids outside the vocabulary",
            tp.SECOND_STAGE_MODEL,
            second(ids + 10**6, mask, tp.context_id_tensor(context, 1)),
            "INVALID_ARGUMENT",
        ),
        (
            "all-padding row",
            tp.FIRST_STAGE_MODEL,
            [
                array_input(tp.INPUT_IDS, ids, "INT64"),
                array_input(tp.ATTENTION_MASK, np.zeros_like(mask), "INT64"),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "mask shape differs",
            tp.FIRST_STAGE_MODEL,
            [
                array_input(tp.INPUT_IDS, ids, "INT64"),
                array_input(tp.ATTENTION_MASK, mask[:, :2], "INT64"),
            ],
            "INVALID_ARGUMENT",
        ),
        (
            "too many rows",
            tp.CONTEXT_ENSEMBLE,
            [
                bytes_input(tp.TEXT, tp.text_tensor(["x"] * 65)),
            ],
            "INVALID_ARGUMENT",
        ),
        ("unknown model", "cde_nope", [bytes_input(tp.TEXT, text)], "NOT_FOUND"),
    ]


def test_bad_inputs_get_errors_and_server_stays_healthy(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    embed(client, [QUERY + "warm"], golden_dataset)
    for name, model, inputs, status in bad_cases(golden_dataset):
        error = expect_error(client, model, inputs)
        assert status in str(error.status()), (name, error.status(), error.message())
        assert not tp.is_context_not_cached(error.message() or ""), name
    assert client.is_server_ready()
    for model in tp.ALL_MODELS:
        assert client.is_model_ready(model)
    queries = embed(client, [QUERY + t for t in GOLDEN["queries"]], golden_dataset)
    assert_close(queries, GOLDEN["query_embeddings"])


def test_empty_text_is_a_valid_text(
    client: grpcclient.InferenceServerClient, golden_dataset: Array
) -> None:
    vectors = embed(client, ["", QUERY], golden_dataset)
    assert vectors.shape == (2, HIDDEN) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])
