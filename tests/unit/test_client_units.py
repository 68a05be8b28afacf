"""Client pieces that need no server: retry policy, chunking, conversions, stream reassembly."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde_client import conversions
from cde_client._calls import ALL_RPCS, HEALTH_CHECK, HealthCheckRequest, HealthCheckResponse
from cde_client._chunking import MESSAGE_RESERVE_BYTES, embed_spans
from cde_client._encoders import DocumentEncoder, EmbedStreamEncoder, StreamAssembler, text_list
from cde_client._progress import NoProgress
from cde_client._replay import Replayable
from cde_client.commands import read_documents
from cde_client.errors import (
    CdeError,
    InconsistentResult,
    InvalidArgument,
    NotFound,
    ProtocolError,
    Unavailable,
    error_for_status,
)
from cde_client.models import EmbedResult, HealthStatus, Limits, ModelInfo
from cde_client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy


def model_info(max_texts: int = 4, max_message_bytes: int = 1 << 20, hidden: int = 8) -> ModelInfo:
    return ModelInfo(
        model_name="m",
        fingerprint="f",
        hidden_size=hidden,
        context_size=16,
        max_tokens=512,
        dtype="float32",
        limits=Limits(
            max_texts_per_request=max_texts,
            max_text_bytes=65536,
            max_message_bytes=max_message_bytes,
            max_context_documents=1000,
            max_concurrent_streams=4,
        ),
    )


# --- retry ----------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    rng = random.Random(1)
    unavailable = Unavailable("down")
    for attempt, bound in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], start=1):
        delay = policy.delay_before_retry(
            unavailable, attempt, idempotent=True, time_left=None, rng=rng
        )
        assert delay is not None
        assert bound / 2 <= delay <= bound


def test_no_jitter_gives_exact_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.5, multiplier=3.0, max_backoff=10.0, jitter=False)
    delays = [
        policy.delay_before_retry(Unavailable("x"), k, idempotent=True, time_left=None)
        for k in (1, 2, 3)
    ]
    assert delays == [0.5, 1.5, 4.5]


@pytest.mark.parametrize(
    ("error", "attempt", "idempotent", "time_left"),
    [
        (Unavailable("down"), 1, False, None),  # not idempotent
        (NotFound("gone"), 1, True, None),  # not a retryable status
        (Unavailable("down"), DEFAULT_RETRY.max_attempts, True, None),  # out of attempts
        (Unavailable("down"), 1, True, 0.01),  # out of time
    ],
)
def test_when_not_to_retry(
    error: CdeError, attempt: int, idempotent: bool, time_left: float | None
) -> None:
    assert (
        DEFAULT_RETRY.delay_before_retry(
            error,
            attempt,
            idempotent=idempotent,
            time_left=time_left,
        )
        is None
    )


def test_off_switch_and_custom_codes_and_server_hint() -> None:
    assert NO_RETRY.delay_before_retry(Unavailable("x"), 1, idempotent=True, time_left=None) is None
    policy = RetryPolicy(retry_on=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}), jitter=False)
    hinted = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", [("retry-after", "3")])
    assert policy.delay_before_retry(hinted, 1, idempotent=True, time_left=None) == 3.0
    assert policy.delay_before_retry(Unavailable("x"), 1, idempotent=True, time_left=None) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_idempotency_table() -> None:
    idempotent = {rpc.path.rsplit("/", 1)[1]: rpc.idempotent for rpc in ALL_RPCS}
    assert idempotent == {
        "Embed": True,
        "EmbedStream": False,
        "CreateContextSet": True,  # with one idempotency key for all tries of a call
        "GetContextSet": True,
        "ListContextSets": True,
        "DeleteContextSet": False,
        "ActivateContextSet": True,
        "ListPrompts": True,
        "PutPrompt": True,
        "DeletePrompt": False,
        "GetModelInfo": True,
        "Check": True,
    }


def test_every_service_method_is_in_the_table() -> None:
    service = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
    paths = {rpc.path for rpc in ALL_RPCS}
    assert {f"/cde.v1.EmbeddingService/{m.name}" for m in service.methods} <= paths


def test_health_messages_match_the_standard_ones() -> None:
    from grpc_health.v1 import health_pb2

    request = HealthCheckRequest(service="cde.v1.EmbeddingService")
    standard = health_pb2.HealthCheckRequest(service="cde.v1.EmbeddingService")
    assert request.SerializeToString() == standard.SerializeToString()
    for number, status in enumerate(HealthStatus):
        wire = health_pb2.HealthCheckResponse(status=number).SerializeToString()
        assert conversions.health_status(HealthCheckResponse.FromString(wire)) is status
    assert HEALTH_CHECK.path == "/grpc.health.v1.Health/Check"


# --- chunking -------------------------------------------------------------------------------


def covered(spans: list[tuple[int, int]], count: int) -> bool:
    return (
        spans[0][0] == 0
        and spans[-1][1] == count
        and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    )


def test_spans_respect_the_text_limit_and_keep_order() -> None:
    texts = [f"t{i}" for i in range(10)]
    spans = embed_spans(texts, model_info(max_texts=4))
    assert spans == [(0, 4), (4, 8), (8, 10)]
    assert embed_spans(texts, None) == [(0, 10)]
    assert embed_spans([], model_info()) == [(0, 0)]


def test_spans_respect_the_message_size() -> None:
    budget = 64 * 1024
    texts = ["é" * 3000 for _ in range(40)]  # 6000 UTF-8 bytes each
    spans = embed_spans(
        texts, model_info(max_texts=1000, max_message_bytes=budget + MESSAGE_RESERVE_BYTES)
    )
    assert covered(spans, len(texts))
    for start, stop in spans:
        assert sum(len(t.encode()) + 8 for t in texts[start:stop]) <= budget
    huge = ["x" * (budget * 2), "small"]
    assert embed_spans(huge, model_info(max_message_bytes=budget + MESSAGE_RESERVE_BYTES)) == [
        (0, 1),
        (1, 2),
    ]


def test_spans_keep_responses_under_the_message_size() -> None:
    info = model_info(
        max_texts=10_000, max_message_bytes=MESSAGE_RESERVE_BYTES + 4 * 1024, hidden=64
    )
    spans = embed_spans(["q"] * 100, info)
    assert covered(spans, 100)
    assert max(stop - start for start, stop in spans) == (4 * 1024) // (64 * 4 + 8)


def test_text_list_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        text_list("hello")
    with pytest.raises(TypeError, match="must be str"):
        text_list(["ok", 3])  # type: ignore[list-item]


# --- conversions ----------------------------------------------------------------------------


def test_matrix_to_array_is_zero_copy_and_read_only() -> None:
    values = np.arange(12, dtype="<f4").reshape(3, 4)
    array = conversions.matrix_to_array(pb.Matrix(data=values.tobytes(), rows=3, dim=4))
    assert array.dtype == np.float32 and array.shape == (3, 4)
    assert np.array_equal(array, values)
    assert not array.flags.writeable
    owner: object = array
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes)  # a view of the message bytes, not a copy
    roundtrip = conversions.matrix_to_array(conversions.array_to_matrix(values))
    assert np.array_equal(roundtrip, values)
    with pytest.raises(ProtocolError):
        conversions.matrix_to_array(pb.Matrix(data=b"\0" * 8, rows=3, dim=4))


def test_matrix_of_no_rows() -> None:
    assert conversions.matrix_to_array(pb.Matrix(data=b"", rows=0, dim=64)).shape == (0, 64)


def embed_response(
    rows: npt.NDArray[np.float32], request_id: str, revision: int = 1
) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=conversions.array_to_matrix(rows),
        model_id="model",
        context_set="docs",
        context_revision=revision,
        token_counts=[3] * len(rows),
        request_id=request_id,
    )


def test_merge_keeps_order_and_request_ids() -> None:
    parts = [
        conversions.embed_result(embed_response(np.full((2, 4), i, np.float32), f"r{i}"))
        for i in range(3)
    ]
    merged = conversions.merge_embed_results(parts)
    assert merged.embeddings.shape == (6, 4)
    assert merged.embeddings[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert merged.request_ids == ("r0", "r1", "r2")
    assert merged.token_counts == (3,) * 6
    assert not merged.embeddings.flags.writeable
    assert len(merged) == 6


def test_merge_refuses_mixed_revisions() -> None:
    a = conversions.embed_result(embed_response(np.zeros((1, 4), np.float32), "a", revision=1))
    b = conversions.embed_result(embed_response(np.zeros((1, 4), np.float32), "b", revision=2))
    with pytest.raises(InconsistentResult, match="retry"):
        conversions.merge_embed_results([a, b])


def test_context_set_conversion() -> None:
    message = pb.ContextSet(
        name="docs",
        revision=2,
        source_document_count=3,
        context_size=16,
        sampling=pb.CONTEXT_SAMPLING_OVERSAMPLED,
        compatible=True,
        context_id="abc",
        prompt="document",
        model_fingerprint="fp",
    )
    message.create_time.FromSeconds(1_700_000_000)
    context_set = conversions.context_set(message)
    assert context_set.sampling == "oversampled"
    assert context_set.create_time.timestamp() == 1_700_000_000
    assert context_set.create_time.tzinfo is not None
    assert context_set.documents is None and context_set.dataset_embeddings is None


# --- streams --------------------------------------------------------------------------------


def stream_ok(sequence: int, value: float, rows: int = 1) -> pb.EmbedStreamResponse:
    response = embed_response(np.full((rows, 4), value, np.float32), f"s{sequence}")
    return pb.EmbedStreamResponse(sequence=sequence, response=response)


def stream_error(sequence: int) -> pb.EmbedStreamResponse:
    return pb.EmbedStreamResponse(
        sequence=sequence, error=pb.ItemError(code=3, message=f"bad item {sequence}")
    )


def test_stream_batches_are_split_and_reassembled_in_order() -> None:
    encoder = EmbedStreamEncoder(
        model_info(max_texts=2), prompt="query", context="docs", normalize=True, truncate=True
    )
    requests = [*encoder.encode(["a", "b", "c"]), *encoder.encode(["d"]), *encoder.encode([])]
    assert encoder.pieces == [2, 1, 1]
    texts = [list(r.request.texts) for r in requests]  # type: ignore[attr-defined]
    assert texts == [["a", "b"], ["c"], ["d"], []]
    assert all(
        r.request.prompt == "query" and r.request.context_set == "docs"  # type: ignore[attr-defined]
        for r in requests
    )
    assembler = StreamAssembler(encoder)
    assert assembler.accept(stream_ok(0, 0.0, rows=2)) == []
    [first] = assembler.accept(stream_ok(1, 1.0))
    assert isinstance(first, EmbedResult)
    assert first.embeddings[:, 0].tolist() == [0.0, 0.0, 1.0]
    [second] = assembler.accept(stream_ok(2, 2.0))
    assert isinstance(second, EmbedResult) and len(second) == 1
    [third] = assembler.accept(stream_error(3))
    assert isinstance(third, InvalidArgument) and third.message == "bad item 3"
    assembler.finish()


def test_a_batch_with_several_failed_pieces_fails_once() -> None:
    encoder = EmbedStreamEncoder(
        model_info(max_texts=1), prompt=None, context=None, normalize=True, truncate=True
    )
    encoder.encode(["a", "b", "c"])
    encoder.encode(["d"])
    assembler = StreamAssembler(encoder)
    assert assembler.accept(stream_error(0)) == []
    assert assembler.accept(stream_error(1)) == []
    [failed] = assembler.accept(stream_ok(2, 0.0))
    assert isinstance(failed, InvalidArgument) and failed.message == "bad item 0"
    [ok] = assembler.accept(stream_ok(3, 1.0))
    assert isinstance(ok, EmbedResult)


def test_stream_protocol_violations() -> None:
    encoder = EmbedStreamEncoder(None, prompt=None, context=None, normalize=True, truncate=True)
    encoder.encode(["a"])
    assembler = StreamAssembler(encoder)
    with pytest.raises(ProtocolError):
        assembler.accept(stream_ok(1, 0.0))
    with pytest.raises(ProtocolError):
        assembler.finish()


def test_documents_are_batched_by_count_and_bytes() -> None:
    options = conversions.context_set_options("docs", replace=False, prompt=None, seed=7)
    encoder = DocumentEncoder(
        options, model_info(max_message_bytes=MESSAGE_RESERVE_BYTES + 10_000), NoProgress()
    )
    messages = [*encoder.head()]
    for i in range(30):
        messages += encoder.encode("x" * 900 + str(i))
    messages += encoder.finish()
    first = messages[0]
    assert isinstance(first, pb.CreateContextSetRequest)
    assert first.options.name == "docs" and first.options.seed == 7
    batches = [list(m.documents.documents) for m in messages[1:]]  # type: ignore[attr-defined]
    assert [d for batch in batches for d in batch] == ["x" * 900 + str(i) for i in range(30)]
    assert all(sum(len(d) + 8 for d in batch) <= 10_000 for batch in batches)
    with pytest.raises(TypeError):
        encoder.encode(b"bytes")  # type: ignore[arg-type]


# --- CLI helpers ----------------------------------------------------------------------------


def test_read_documents(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "d.txt").write_text("one\n\n  \ntwo words\n")
    (folder / "d.jsonl").write_text('"one"\n{"text": "two", "id": 1}\n\n')
    (folder / "bad.jsonl").write_text('"one"\n{"body": "two"}\n')
    assert list(read_documents(str(folder / "d.txt"))) == ["one", "two words"]
    assert list(read_documents(str(folder / "d.jsonl"))) == ["one", "two"]
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_documents(str(folder / "bad.jsonl")))


def test_replayable_documents_are_read_once_and_resent_from_memory() -> None:
    reads: list[int] = []

    def source() -> Iterator[str]:
        for i in range(5):
            reads.append(i)
            yield f"doc {i}"

    replayable = Replayable(source())
    first = iter(replayable)
    assert [next(first), next(first)] == ["doc 0", "doc 1"]  # a try that broke off
    assert list(replayable) == [f"doc {i}" for i in range(5)]
    assert list(replayable) == [f"doc {i}" for i in range(5)]
    assert reads == [0, 1, 2, 3, 4]


def test_replayable_async_documents() -> None:
    async def source() -> AsyncIterator[str]:
        for i in range(3):
            yield f"doc {i}"

    async def body() -> tuple[list[str], list[str]]:
        replayable = Replayable(source())
        first = [item async for item in replayable]
        return first, [item async for item in replayable]

    assert asyncio.run(body()) == (["doc 0", "doc 1", "doc 2"], ["doc 0", "doc 1", "doc 2"])
    with pytest.raises(TypeError, match="plain iterable"):
        list(Replayable(source()))
