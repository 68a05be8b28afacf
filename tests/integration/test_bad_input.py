"""Bad input, table driven: each case gets its documented status and the gateway stays healthy.

Cases run against a gateway with small limits ("small") or with the default ones ("default"),
both in front of the session's real Triton. Every expected status names the row of
`cde_server.gateway.status.ERROR_TABLE` it exercises (or "valid input" when the answer is OK).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.gateway.status import ERROR_TABLE
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import raw_grpc as raw
from support.gateway_fixtures import GatewayThread, gateway_settings

Code = grpc.StatusCode
MAX_TEXTS = 4
MAX_TEXT_BYTES = 1000
MAX_DOCUMENTS = 8
MAX_CONTEXT_BYTES = 6000
MIB = 1024 * 1024
VALID = "valid input"
EXISTING = "existing-set"
# rows exercised elsewhere: they need server state or authentication, not a bad request
SERVER_STATE_ROWS = {  # covered by tests that build that state (test_overload, revisions, ...)
    "A message larger than its RPC can need (Embed: max_texts_per_request texts of "
    "max_text_bytes; Get, List, Delete, prompts: 64 KiB), refused before parsing",
    "A request stream that sends nothing for CDE_STREAM_IDLE_TIMEOUT_S",
    "30 failed authentications from one address within 10 s (retry-after trailer)",
    "Work beyond CDE_MAX_TEXTS_IN_FLIGHT while CDE_MAX_QUEUED_TEXTS of the tenant's "
    "already wait (retry-after trailer)",
    "The caller's deadline passed while its call waited for capacity",
    "A pinned (name@N) or activated revision that was pruned, deleted or never made",
    "DeleteContextSet of the active revision alone (name@N)",
    "GetContextSet answer (documents, embeddings) over CDE_MAX_MESSAGE_BYTES",
    "No API key, or an unknown one (auth on)",
    "ListContextSets all_tenants without an admin key",
    "A tenant over CDE_RATE_LIMIT_RPS (retry-after trailer)",
    "A tenant over CDE_MAX_STREAMS_PER_TENANT open streams",
    "Context set built with another model",
    "More than 1000 custom prompts",
    "More than CDE_MAX_CONCURRENT_STREAMS open streams",
    "No Triton endpoint reachable and ready",
    "Store (SQLite/Redis) unreachable",
    "Context set replaced while a request needed its embeddings",
    "Caller's deadline passed while waiting for the model",
    "Unexpected server or model failure",
    "Triton's queue of a model is full (its max_queue_size) on every endpoint (retry-after "
    "trailer)",  # test_overload.py
    # test_gateway_store_limits.py
    "CreateContextSet: an idempotency key the set's retained revisions carry, with other "
    "options or documents",
    "CreateContextSet: a new set beyond CDE_MAX_CONTEXT_SETS_PER_TENANT (not retryable until "
    "the tenant deletes one; no retry-after)",
    "CreateContextSet: a revision that would take the tenant's stored bytes past "
    "CDE_MAX_STORED_BYTES_PER_TENANT (after pruning; not retryable until it frees space; no "
    "retry-after)",
}
ROW_CODES = {row.case: row.code for row in ERROR_TABLE}


@dataclass
class Target:
    """A gateway under test: its typed stub and a channel for raw calls."""

    stub: pb_grpc.EmbeddingServiceStub
    channel: grpc.Channel
    address: str


@pytest.fixture(scope="module")
def small(triton_grpc_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A gateway with tiny limits and a context set called EXISTING."""
    store = tmp_path_factory.mktemp("bad-input") / "store.db"
    settings = gateway_settings(
        triton_grpc_url,
        f"sqlite://{store}",
        max_texts_per_request=MAX_TEXTS,
        max_text_bytes=MAX_TEXT_BYTES,
        max_message_bytes=MIB,
        max_context_documents=MAX_DOCUMENTS,
        max_context_bytes=MAX_CONTEXT_BYTES,
    )
    gateway = GatewayThread(settings).start()
    try:
        with gateway.channel() as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            create(stub, EXISTING, ["one document", "another document"])
            yield Target(stub, channel, gateway.address)
    finally:
        gateway.close()


@pytest.fixture(scope="module")
def default(gateway: GatewayThread) -> Iterator[Target]:
    """The session's gateway (default limits)."""
    with gateway.channel() as channel:
        yield Target(pb_grpc.EmbeddingServiceStub(channel), channel, gateway.address)


def create(
    stub: pb_grpc.EmbeddingServiceStub, name: str, docs: list[str], **options: object
) -> pb.CreateContextSetResponse:
    """CreateContextSet: options, then one batch of documents."""
    messages = [
        pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **options)),  # type: ignore[arg-type]
        pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=docs)),
    ]
    response: pb.CreateContextSetResponse = stub.CreateContextSet(iter(messages))
    return response


def opts(name: str, **fields: object) -> pb.CreateContextSetRequest:
    return pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=name, **fields))  # type: ignore[arg-type]


def docs(*texts: str) -> pb.CreateContextSetRequest:
    return pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=texts))


def fresh(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


Call = Callable[[Target], object]


@dataclass(frozen=True)
class Case:
    """One bad (or borderline) input and its documented answer."""

    gateway: str  # "small" or "default"
    call: Call
    code: grpc.StatusCode
    fragment: str
    row: str  # the ERROR_TABLE case, or VALID for OK


BAD_UTF8 = b"\xff\xfe"
LONG_NAME = "n" * 65
CASES: dict[str, Case] = {
    # --- Embed: texts --------------------------------------------------------------------------
    "embed no texts": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest()), Code.INVALID_ARGUMENT,
        "texts is empty; send 1 to 4 texts", "Embed with no texts"),
    "embed empty string is valid": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=[""])), Code.OK, "", VALID),
    "embed odd unicode is valid": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["\x00\u200b\U0001f600 \ufeff"])),
        Code.OK, "", VALID),
    "embed too many texts": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"] * 5)),
        Code.INVALID_ARGUMENT, "5 texts in one request; the limit is 4",
        "More texts than CDE_MAX_TEXTS_PER_REQUEST"),
    "embed text over max_text_bytes": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["ok", "é" * 600])),
        Code.INVALID_ARGUMENT, "text 1 is 1200 bytes; the limit is 1000",
        "A text larger than CDE_MAX_TEXT_BYTES"),
    "embed 10 MB text under the message limit": Case(
        "default", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["x" * 10_000_000])),
        Code.INVALID_ARGUMENT, "text 0 is 10000000 bytes; the limit is 65536",
        "A text larger than CDE_MAX_TEXT_BYTES"),
    "embed 10 MB text over the message limit": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["x" * 10_000_000])),
        Code.RESOURCE_EXHAUSTED, "larger than max", "Message larger than CDE_MAX_MESSAGE_BYTES"),
    "embed truncate false, overlong text": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["w." * 400], truncate=False)),
        Code.INVALID_ARGUMENT, "truncate is false",
        "truncate=false and a text that does not fit in max_tokens"),
    # --- Embed: names ----------------------------------------------------------------------------
    "embed unknown prompt": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"], prompt="legal")),
        Code.NOT_FOUND, 'prompt "legal" not found', "Unknown prompt"),
    "embed unknown context set": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"], context_set="nope")),
        Code.NOT_FOUND, 'context set "nope" not found', "Unknown context set (Embed, Get, Delete)"),
    "embed invalid context set revision": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"], context_set="docs@x")),
        Code.INVALID_ARGUMENT, "invalid context set revision 'x' in docs@x",
        "Invalid revision in a context set reference (name@N)"),
    "embed revision zero": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"], context_set="docs@0")),
        Code.INVALID_ARGUMENT, "invalid context set revision '0'",
        "Invalid revision in a context set reference (name@N)"),
    "embed invalid prompt name": Case(
        "small", lambda t: t.stub.Embed(pb.EmbedRequest(texts=["a"], prompt="a b")),
        Code.INVALID_ARGUMENT, "invalid prompt name 'a b'", "Invalid context set or prompt name"),
    # --- raw bytes -----------------------------------------------------------------------------
    "raw Embed text not UTF-8": Case(
        "small", lambda t: raw.unary(t.channel, "Embed", raw.embed_request(BAD_UTF8)),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.EmbedRequest message",
        "Request bytes that do not parse (a text field not UTF-8, truncated or not protobuf), "
        "in any RPC or stream message"),
    "raw Embed prompt not UTF-8": Case(
        "small",
        lambda t: raw.unary(
            t.channel, "Embed", raw.embed_request(b"a") + raw.length_delimited(2, b"\xc3\x28")),
        Code.INVALID_ARGUMENT, "text fields must be UTF-8", ""),
    "raw PutPrompt name not UTF-8": Case(
        "small", lambda t: raw.unary(t.channel, "PutPrompt", raw.length_delimited(1, BAD_UTF8)),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.PutPromptRequest message", ""),
    "raw GetContextSet name not UTF-8": Case(
        "small",
        lambda t: raw.unary(t.channel, "GetContextSet", raw.length_delimited(1, BAD_UTF8)),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.GetContextSetRequest message", ""),
    "raw ListContextSets page_token not UTF-8": Case(
        "small",
        lambda t: raw.unary(t.channel, "ListContextSets", raw.length_delimited(2, BAD_UTF8)),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.ListContextSetsRequest message", ""),
    "raw CreateContextSet options name not UTF-8": Case(
        "small",
        lambda t: raw.stream_unary(t.channel, "CreateContextSet", [raw.create_options(BAD_UTF8)]),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.CreateContextSetRequest message", ""),
    "raw CreateContextSet document not UTF-8": Case(
        "small",
        lambda t: raw.stream_unary(
            t.channel, "CreateContextSet",
            [raw.create_options(fresh().encode()), raw.create_documents(b"fine", BAD_UTF8)]),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.CreateContextSetRequest message", ""),
    "raw EmbedStream item not UTF-8": Case(
        "small",
        lambda t: raw.stream_stream(
            t.channel, "EmbedStream",
            [raw.stream_item(raw.embed_request(b"good")),
             raw.stream_item(raw.embed_request(BAD_UTF8))]),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.EmbedStreamRequest message", ""),
    "raw garbage bytes": Case(
        "small", lambda t: raw.unary(t.channel, "Embed", b"\xff\xff\xff\xff\xff\xff"),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.EmbedRequest message", ""),
    "raw truncated message": Case(
        "small", lambda t: raw.unary(t.channel, "Embed", b"\x0a\x10only-part"),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.EmbedRequest message", ""),
    "raw garbage to an empty request type": Case(
        "small", lambda t: raw.unary(t.channel, "GetModelInfo", b"\x0a\x05ab"),
        Code.INVALID_ARGUMENT, "not a valid cde.v1.GetModelInfoRequest message", ""),
    "raw varint where a string is expected (unknown field)": Case(
        "small", lambda t: raw.unary(t.channel, "Embed", raw.varint_field(1, 7)),
        Code.INVALID_ARGUMENT, "texts is empty", "Embed with no texts"),
    "raw unknown fields are ignored": Case(
        "small",
        lambda t: raw.unary(
            t.channel, "Embed",
            raw.embed_request(b"hi") + raw.length_delimited(99, b"?") + raw.varint_field(98, 1)),
        Code.OK, "", VALID),
    "raw negative page_size wraps to a large one": Case(
        "small", lambda t: raw.unary(t.channel, "ListContextSets", raw.varint_field(1, -1)),
        Code.OK, "", VALID),
    # --- names of context sets and prompts -----------------------------------------------------
    **{
        f"context set name {label}": Case(
            "small", (lambda n: lambda t: t.stub.GetContextSet(pb.GetContextSetRequest(name=n)))(
                name),
            Code.INVALID_ARGUMENT, fragment, "Invalid context set or prompt name")
        for label, name, fragment in (
            ("with a space", "a b", "invalid context set name 'a b'"),
            ("too long", LONG_NAME, "65 characters long (at most 64)"),
            ("with a leading dot", ".hidden", "invalid context set name '.hidden'"),
            ("in unicode", "naïve", "invalid context set name 'naïve'"),
            ("with a slash", "a/b", "invalid context set name 'a/b'"),
        )
    },
    **{
        f"prompt name {label}": Case(
            "small",
            (lambda n: lambda t: t.stub.PutPrompt(pb.PutPromptRequest(name=n, text="p: ")))(name),
            Code.INVALID_ARGUMENT, fragment, "Invalid context set or prompt name")
        for label, name, fragment in (
            ("empty", "", "prompt name is empty"),
            ("with a slash", "../etc", "invalid prompt name '../etc'"),
            ("too long", LONG_NAME, "65 characters long"),
        )
    },
    "create with an invalid name": Case(
        "small", lambda t: create(t.stub, "bad name!", ["d"]), Code.INVALID_ARGUMENT,
        "invalid context set name 'bad name!'", "Invalid context set or prompt name"),
    "delete an invalid name": Case(
        "small", lambda t: t.stub.DeleteContextSet(pb.DeleteContextSetRequest(name="-x")),
        Code.INVALID_ARGUMENT, "invalid context set name '-x'",
        "Invalid context set or prompt name"),
    # --- prompts -------------------------------------------------------------------------------
    "put a built-in prompt": Case(
        "small", lambda t: t.stub.PutPrompt(pb.PutPromptRequest(name="query", text="q: ")),
        Code.INVALID_ARGUMENT, 'prompt "query" is built in and cannot be changed',
        "PutPrompt/DeletePrompt on a built-in prompt"),
    "delete a built-in prompt": Case(
        "small", lambda t: t.stub.DeletePrompt(pb.DeletePromptRequest(name="clustering")),
        Code.INVALID_ARGUMENT, 'prompt "clustering" is built in and cannot be deleted',
        "PutPrompt/DeletePrompt on a built-in prompt"),
    "delete an unknown prompt": Case(
        "small", lambda t: t.stub.DeletePrompt(pb.DeletePromptRequest(name="never-made")),
        Code.NOT_FOUND, "never-made", "Unknown prompt"),
    "prompt text too long": Case(
        "small", lambda t: t.stub.PutPrompt(pb.PutPromptRequest(name="long", text="é" * 600)),
        Code.INVALID_ARGUMENT, 'prompt "long" text is 1200 bytes; the limit is 1024',
        "Prompt text over 1024 bytes"),
    # --- context sets --------------------------------------------------------------------------
    "get an unknown context set": Case(
        "small", lambda t: t.stub.GetContextSet(pb.GetContextSetRequest(name="missing")),
        Code.NOT_FOUND, 'context set "missing" not found',
        "Unknown context set (Embed, Get, Delete)"),
    "delete an unknown context set": Case(
        "small", lambda t: t.stub.DeleteContextSet(pb.DeleteContextSetRequest(name="missing")),
        Code.NOT_FOUND, 'context set "missing" not found',
        "Unknown context set (Embed, Get, Delete)"),
    "create a duplicate": Case(
        "small", lambda t: create(t.stub, EXISTING, ["d"]), Code.ALREADY_EXISTS,
        f'context set "{EXISTING}" already exists',
        "CreateContextSet: name exists and replace is false"),
    "create with an idempotency key containing a space": Case(
        "small", lambda t: create(t.stub, fresh(), ["d"], idempotency_key="a b"),
        Code.INVALID_ARGUMENT, "invalid idempotency key 'a b'",
        "CreateContextSet: an idempotency key (or HTTP Idempotency-Key) that is not 1 to 128 "
        "printable ASCII characters"),
    "create with an unknown prompt": Case(
        "small", lambda t: create(t.stub, fresh(), ["d"], prompt="legal"), Code.NOT_FOUND,
        'prompt "legal" not found', "Unknown prompt"),
    "create with an empty stream": Case(
        "small", lambda t: t.stub.CreateContextSet(iter([])), Code.INVALID_ARGUMENT,
        "the stream is empty; send options first", "CreateContextSet: empty stream"),
    "create without options first": Case(
        "small", lambda t: t.stub.CreateContextSet(iter([docs("a"), opts(fresh())])),
        Code.INVALID_ARGUMENT, "the first message must carry options",
        "CreateContextSet: first message is not options"),
    "create with options twice": Case(
        "small", lambda t: t.stub.CreateContextSet(iter([opts("o"), docs("a"), opts("o")])),
        Code.INVALID_ARGUMENT, "options may only be sent once",
        "CreateContextSet: options sent twice"),
    "create with zero documents": Case(
        "small", lambda t: t.stub.CreateContextSet(iter([opts(fresh()), docs(), docs()])),
        Code.INVALID_ARGUMENT, "no context documents were sent; send at least 1",
        "CreateContextSet: no documents"),
    "create with too many documents": Case(
        "small",
        lambda t: t.stub.CreateContextSet(
            iter([opts(fresh()), docs(*"abcde"), docs(*"fghij")])),
        Code.INVALID_ARGUMENT, "more than 8 context documents were sent (the limit)",
        "CreateContextSet: more than CDE_MAX_CONTEXT_DOCUMENTS"),
    "create with too many bytes": Case(
        "small",
        lambda t: t.stub.CreateContextSet(
            iter([opts(fresh())] + [docs("b" * 1000, "c" * 1000) for _ in range(4)])),
        Code.INVALID_ARGUMENT,
        "exceed the limit of 6000 bytes in total at document 6",
        "CreateContextSet: documents over CDE_MAX_CONTEXT_BYTES in total"),
    "create with a document over max_text_bytes": Case(
        "small", lambda t: create(t.stub, fresh(), ["fine", "d" * 1001]), Code.INVALID_ARGUMENT,
        "context document 1 is 1001 bytes; the limit is 1000",
        "A text larger than CDE_MAX_TEXT_BYTES"),
    "create with a message over max_message_bytes": Case(
        "small",
        lambda t: t.stub.CreateContextSet(iter([opts(fresh()), docs(*["m" * 900] * 1300)])),
        Code.RESOURCE_EXHAUSTED, "larger than max", "Message larger than CDE_MAX_MESSAGE_BYTES"),
    "create with empty documents is valid": Case(
        "small", lambda t: create(t.stub, fresh(), ["", ""]), Code.OK, "", VALID),
    # --- listing -------------------------------------------------------------------------------
    "list with a bad page_token": Case(
        "small",
        lambda t: t.stub.ListContextSets(pb.ListContextSetsRequest(page_token="garbage!")),
        Code.INVALID_ARGUMENT, "invalid page_token; pass the next_page_token of a listing",
        "Bad page_token"),
    "list with a token of an invalid name": Case(
        "small",
        lambda t: t.stub.ListContextSets(pb.ListContextSetsRequest(page_token="djE6LmJhZA")),
        Code.INVALID_ARGUMENT, "invalid page_token", "Bad page_token"),
}  # fmt: skip


def assert_healthy(target: Target) -> None:
    """grpc.health.v1 says SERVING and a normal Embed works."""
    health = health_pb2_grpc.HealthStub(target.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert target.stub.Embed(pb.EmbedRequest(texts=["still fine"]), timeout=30).embeddings.rows == 1


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    target: Target = request.getfixturevalue(case.gateway)
    if case.code == Code.OK:
        case.call(target)
    else:
        with pytest.raises(grpc.RpcError) as info:
            case.call(target)
        assert info.value.code() == case.code, info.value.details()
        assert case.fragment in (info.value.details() or ""), info.value.details()
    assert_healthy(target)


def test_cases_match_the_error_table() -> None:
    assert len(CASES) >= 25
    rows = {case.row for case in CASES.values() if case.row}
    for name, case in CASES.items():
        if case.row == VALID:
            assert case.code == Code.OK, name
        elif case.row:
            assert ROW_CODES[case.row] == case.code, name
    uncovered = set(ROW_CODES) - rows - SERVER_STATE_ROWS
    assert not uncovered, f"ERROR_TABLE rows without a bad-input case: {uncovered}"


def test_raw_bad_message_mid_stream_keeps_earlier_answers(small: Target) -> None:
    call = small.channel.stream_stream(
        raw.SERVICE + "EmbedStream",
        request_serializer=lambda b: b,
        response_deserializer=pb.EmbedStreamResponse.FromString,
    )
    good = raw.stream_item(raw.embed_request(b"good"))
    answers = []
    with pytest.raises(grpc.RpcError) as info:
        for answer in call(iter([good, good, raw.stream_item(raw.embed_request(BAD_UTF8))])):
            answers.append(answer)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert [a.sequence for a in answers] == [0, 1]
    assert all(a.HasField("response") for a in answers)
    assert_healthy(small)


def test_embed_stream_item_errors_interleaved(small: Target) -> None:
    good = pb.EmbedRequest(texts=["fine"])
    bad = {
        1: (pb.EmbedRequest(), Code.INVALID_ARGUMENT),
        3: (pb.EmbedRequest(texts=["a"] * 5), Code.INVALID_ARGUMENT),
        4: (pb.EmbedRequest(texts=["a"], context_set="nope"), Code.NOT_FOUND),
        6: (pb.EmbedRequest(texts=["a"], prompt="bad name"), Code.INVALID_ARGUMENT),
        7: (pb.EmbedRequest(texts=["a"], prompt="nope"), Code.NOT_FOUND),
    }
    requests = [bad[i][0] if i in bad else good for i in range(10)]
    answers = list(small.stub.EmbedStream(pb.EmbedStreamRequest(request=r) for r in requests))
    assert [a.sequence for a in answers] == list(range(10))
    for index, answer in enumerate(answers):
        if index in bad:
            assert answer.error.code == bad[index][1].value[0], answer.error.message
        else:
            assert answer.response.embeddings.rows == 1
    assert_healthy(small)


def test_concurrent_create_of_one_name(small: Target) -> None:
    name = fresh("race")
    start = threading.Barrier(6)

    def attempt(_: int) -> grpc.StatusCode:
        start.wait(10)
        try:
            create(small.stub, name, ["race document one", "race document two"])
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return Code.OK

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(attempt, range(6)))
    assert codes.count(Code.OK) == 1, codes
    assert codes.count(Code.ALREADY_EXISTS) == 5, codes
    assert_healthy(small)


def test_delete_while_embedding(small: Target) -> None:
    """Embeds racing a delete either use the old set or get NOT_FOUND, never INTERNAL."""
    for round_ in range(3):
        name = fresh(f"del{round_}")
        create(small.stub, name, [f"round {round_} document {i}" for i in range(3)])
        futures = [
            small.stub.Embed.future(pb.EmbedRequest(texts=[f"t{i}"], context_set=name))
            for i in range(12)
        ]
        small.stub.DeleteContextSet(pb.DeleteContextSetRequest(name=name))
        futures += [
            small.stub.Embed.future(pb.EmbedRequest(texts=["after"], context_set=name))
            for _ in range(3)
        ]
        for future in futures:
            try:
                response = future.result(timeout=60)
            except grpc.RpcError as error:
                assert error.code() == Code.NOT_FOUND, error.details()
            else:
                assert response.context_set == name and response.context_revision == 1
    assert_healthy(small)


def test_limits_report_context_bytes(small: Target) -> None:
    limits = small.stub.GetModelInfo(pb.GetModelInfoRequest()).limits
    assert limits.max_context_bytes == MAX_CONTEXT_BYTES
    assert limits.max_context_documents == MAX_DOCUMENTS


def test_undecodable_calls_are_counted_and_health_port(
    triton_grpc_url: str, tmp_path: Path
) -> None:
    """A rejected raw message is a counted INVALID_ARGUMENT call with a request id."""
    settings = gateway_settings(triton_grpc_url, f"sqlite://{tmp_path / 's.db'}", health_port=0)
    gateway = GatewayThread(settings).start()
    try:
        assert gateway.gateway is not None
        metrics = gateway.gateway.metrics
        with gateway.channel() as channel:
            call = channel.unary_unary(
                raw.SERVICE + "Embed", request_serializer=lambda b: b, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as info:
                call(raw.embed_request(BAD_UTF8), metadata=(("x-request-id", "raw-1"),))
            assert ("x-request-id", "raw-1") in tuple(info.value.trailing_metadata())
            with pytest.raises(grpc.RpcError):
                raw.stream_unary(channel, "CreateContextSet", [raw.create_options(BAD_UTF8)])
        expected = {
            ("Embed", "INVALID_ARGUMENT"): 1.0,
            ("CreateContextSet", "INVALID_ARGUMENT"): 1.0,
        }
        deadline = time.monotonic() + 10
        while True:  # a call is counted just after its status reaches the client
            samples = {
                (s.labels.get("rpc"), s.labels.get("code")): s.value
                for family in metrics.registry.collect()
                for s in family.samples
                if s.name == "cde_gateway_requests_total"
            }
            if expected.items() <= samples.items() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert expected.items() <= samples.items(), samples
        with grpc.insecure_channel(f"127.0.0.1:{gateway.gateway.health_port}") as health:
            check = health.unary_unary("/grpc.health.v1.Health/Check", request_serializer=bytes)
            with pytest.raises(grpc.RpcError) as info:
                check(raw.length_delimited(1, BAD_UTF8), timeout=10)
            assert info.value.code() == Code.INVALID_ARGUMENT  # the health-only port too
    finally:
        gateway.close()


def test_health_and_reflection_reject_undecodable(small: Target) -> None:
    with pytest.raises(grpc.RpcError) as info:
        small.channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b)(
            raw.length_delimited(1, BAD_UTF8), timeout=10
        )
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in (info.value.details() or "")
    reflection = small.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(reflection(iter([raw.length_delimited(1, BAD_UTF8)]), timeout=10))
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert_healthy(small)
