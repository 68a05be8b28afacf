"""Fuzzing the gateway's requests (hypothesis): every answer is OK or a documented client error.

Typed messages with random contents (odd unicode, random names, sizes and flags) and raw byte
strings sent without a serializer go to a gateway with small limits in front of the real
Triton. No answer may be UNKNOWN, INTERNAL or any other code a client's input cannot explain,
and the gateway stays SERVING. Derandomized and bounded so it runs in well under a minute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from cde.v1 import embedding_service_pb2 as pb
from cde.v1 import embedding_service_pb2_grpc as pb_grpc
from cde_server.domain.names import NAME_PATTERN
from cde_server.domain.pagination import encode_page_token
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import raw_grpc as raw
from support.gateway_fixtures import GatewayThread, gateway_settings

Code = grpc.StatusCode
CLIENT_ERRORS = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.RESOURCE_EXHAUSTED,
}
CODES = {code.value[0]: code for code in Code}
KNOWN_SET = "fuzz-known"
KNOWN_PROMPT = "fuzz-prompt"
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Fuzzed:
    """The gateway under fuzz: stubs and a raw channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.stub = pb_grpc.EmbeddingServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def answer(self, call: Callable[[], object]) -> grpc.StatusCode:
        """The status of `call`, asserted to be one a client's input can cause."""
        try:
            call()
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            assert code in CLIENT_ERRORS, f"{code}: {error.details()}"
            event(code.name)
            return code
        event("OK")
        return Code.OK

    def assert_serving(self) -> None:
        status = self.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def fuzzed(triton_grpc_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    store = tmp_path_factory.mktemp("fuzz") / "store.db"
    settings_ = gateway_settings(
        triton_grpc_url,
        f"sqlite://{store}",
        max_texts_per_request=4,
        max_text_bytes=2000,
        max_message_bytes=1024 * 1024,
        max_context_documents=8,
        max_context_bytes=6000,
    )
    gateway = GatewayThread(settings_).start()
    try:
        with gateway.channel() as channel:
            target = Fuzzed(channel)
            target.stub.PutPrompt(pb.PutPromptRequest(name=KNOWN_PROMPT, text="fz: "))
            target.stub.CreateContextSet(
                iter(
                    [
                        pb.CreateContextSetRequest(options=pb.ContextSetOptions(name=KNOWN_SET)),
                        pb.CreateContextSetRequest(
                            documents=pb.DocumentBatch(documents=["alpha", "beta"])
                        ),
                    ]
                )
            )
            yield target
            target.stub.Embed(pb.EmbedRequest(texts=["after the fuzz"]), timeout=30)
            target.assert_serving()
    finally:
        gateway.close()


# --- strategies ---------------------------------------------------------------------------------
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
texts = st.one_of(
    unicode_text,
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001f600", "w. "]), st.integers(0, 900)
    ),
)
names = st.one_of(
    st.sampled_from(["", "query", "document", "clustering", KNOWN_SET, KNOWN_PROMPT, "a", "-a"]),
    st.from_regex(NAME_PATTERN, fullmatch=True),
    unicode_text,
)
flags = st.one_of(st.none(), st.booleans())


@st.composite
def embed_requests(draw: st.DrawFn) -> pb.EmbedRequest:
    request = pb.EmbedRequest(
        texts=draw(st.lists(texts, max_size=6)),
        prompt=draw(names),
        context_set=draw(st.one_of(st.just(""), names)),
    )
    if (normalize := draw(flags)) is not None:
        request.normalize = normalize
    if (truncate := draw(flags)) is not None:
        request.truncate = truncate
    return request


@st.composite
def create_streams(draw: st.DrawFn) -> list[pb.CreateContextSetRequest]:
    def options() -> pb.CreateContextSetRequest:
        message = pb.ContextSetOptions(
            name=draw(st.one_of(st.from_regex(NAME_PATTERN, fullmatch=True), names)),
            replace=draw(st.booleans()),
            prompt=draw(st.one_of(st.sampled_from(["", "query"]), names)),
        )
        if draw(st.booleans()):
            message.seed = draw(st.integers(0, 2**64 - 1))
        return pb.CreateContextSetRequest(options=message)

    def batch() -> pb.CreateContextSetRequest:
        documents = draw(st.lists(texts, max_size=5))
        return pb.CreateContextSetRequest(documents=pb.DocumentBatch(documents=documents))

    kinds = draw(st.lists(st.sampled_from(["batch", "batch", "batch", "options"]), max_size=4))
    head = [options()] if draw(st.integers(0, 4)) else []
    return head + [options() if kind == "options" else batch() for kind in kinds]


page_tokens = st.one_of(
    st.just(""),
    st.from_regex(NAME_PATTERN, fullmatch=True).map(encode_page_token),
    unicode_text,
)


# --- typed messages -----------------------------------------------------------------------------
@FUZZ
@given(request=embed_requests())
def test_fuzz_embed(fuzzed: Fuzzed, request: pb.EmbedRequest) -> None:
    fuzzed.answer(lambda: fuzzed.stub.Embed(request, timeout=30))


@settings(FUZZ, max_examples=60)
@given(stream=create_streams())
def test_fuzz_create_context_set(fuzzed: Fuzzed, stream: list[pb.CreateContextSetRequest]) -> None:
    fuzzed.answer(lambda: fuzzed.stub.CreateContextSet(iter(stream), timeout=30))
    fuzzed.assert_serving()


@settings(FUZZ, max_examples=30)
@given(items=st.lists(embed_requests(), max_size=5))
def test_fuzz_embed_stream(fuzzed: Fuzzed, items: list[pb.EmbedRequest]) -> None:
    stream = [pb.EmbedStreamRequest(request=item) for item in items]
    answers = list(fuzzed.stub.EmbedStream(iter(stream), timeout=30))
    assert [a.sequence for a in answers] == list(range(len(items)))
    for answer in answers:
        if answer.HasField("error"):
            assert CODES[answer.error.code] in CLIENT_ERRORS, answer.error.message


@FUZZ
@given(
    kind=st.sampled_from(["put", "delete", "get", "list", "delete_set"]),
    name=names,
    text=texts,
    page_size=st.integers(0, 2**32 - 1),
    token=page_tokens,
    include=st.tuples(st.booleans(), st.booleans()),
)
def test_fuzz_small_calls(
    fuzzed: Fuzzed,
    kind: str,
    name: str,
    text: str,
    page_size: int,
    token: str,
    include: tuple[bool, bool],
) -> None:
    stub = fuzzed.stub
    protected = name in (KNOWN_SET, KNOWN_PROMPT)
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: stub.PutPrompt(pb.PutPromptRequest(name=name, text=text)),
        "delete": lambda: protected or stub.DeletePrompt(pb.DeletePromptRequest(name=name)),
        "get": lambda: stub.GetContextSet(
            pb.GetContextSetRequest(
                name=name, include_documents=include[0], include_embeddings=include[1]
            )
        ),
        "list": lambda: stub.ListContextSets(
            pb.ListContextSetsRequest(page_size=page_size, page_token=token)
        ),
        "delete_set": lambda: (
            protected or stub.DeleteContextSet(pb.DeleteContextSetRequest(name=name))
        ),
    }
    fuzzed.answer(calls[kind])


# --- raw bytes ----------------------------------------------------------------------------------
raw_messages = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.integers(1, 7), st.binary(max_size=40)), min_size=1, max_size=4).map(
        lambda fields: b"".join(raw.length_delimited(f, p) for f, p in fields)
    ),
    st.lists(st.tuples(st.integers(1, 7), st.integers(-(2**63), 2**64 - 1)), max_size=4).map(
        lambda fields: b"".join(raw.varint_field(f, v) for f, v in fields)
    ),
)


@settings(FUZZ, max_examples=200)
@given(method=st.sampled_from(raw.UNARY_METHODS), payload=raw_messages)
def test_fuzz_raw_unary(fuzzed: Fuzzed, method: str, payload: bytes) -> None:
    if method in ("DeleteContextSet", "DeletePrompt"):
        method = "GetContextSet"  # keep the fixture's set and prompt
    fuzzed.answer(lambda: raw.unary(fuzzed.channel, method, payload))


@settings(FUZZ, max_examples=60)
@given(
    method=st.sampled_from(["CreateContextSet", "EmbedStream"]),
    payloads=st.lists(raw_messages, max_size=3),
)
def test_fuzz_raw_streams(fuzzed: Fuzzed, method: str, payloads: list[bytes]) -> None:
    if method == "CreateContextSet":
        fuzzed.answer(lambda: raw.stream_unary(fuzzed.channel, method, payloads))
    else:
        fuzzed.answer(lambda: raw.stream_stream(fuzzed.channel, method, payloads))
    fuzzed.assert_serving()
