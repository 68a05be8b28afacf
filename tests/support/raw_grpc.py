"""Test helpers: hand-encoded protobuf bytes and raw (unserialized) gRPC calls to the gateway.

A client library always sends well-formed messages; these helpers send exactly the bytes a
test chooses (invalid UTF-8 in a string field, wrong wire types, truncated or garbage bytes).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

SERVICE = "/cde.v1.EmbeddingService/"
UNARY_METHODS = (
    "Embed",
    "GetContextSet",
    "ListContextSets",
    "DeleteContextSet",
    "ListPrompts",
    "PutPrompt",
    "DeletePrompt",
    "GetModelInfo",
)
TIMEOUT_S = 30.0


def varint(value: int) -> bytes:
    """Base-128 varint (negative values as 64-bit two's complement, as protobuf does)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """Field `field` with wire type 2 (string, bytes, message) holding `payload`."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def varint_field(field: int, value: int) -> bytes:
    """Field `field` with wire type 0 (varint)."""
    return varint(field << 3) + varint(value)


def _identity(data: bytes) -> bytes:
    return data


def unary(channel: grpc.Channel, method: str, payload: bytes) -> bytes:
    """Call a unary RPC with raw request bytes; the raw response bytes."""
    call = channel.unary_unary(
        SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    response: bytes = call(payload, timeout=TIMEOUT_S)
    return response


def stream_unary(channel: grpc.Channel, method: str, payloads: Iterable[bytes]) -> bytes:
    """Call a client-streaming RPC (CreateContextSet) with raw messages."""
    call = channel.stream_unary(
        SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    response: bytes = call(iter(list(payloads)), timeout=TIMEOUT_S)
    return response


def stream_stream(channel: grpc.Channel, method: str, payloads: Iterable[bytes]) -> list[bytes]:
    """Call a bidirectional RPC (EmbedStream) with raw messages; all raw responses."""
    call = channel.stream_stream(
        SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    return list(call(iter(list(payloads)), timeout=TIMEOUT_S))


def embed_request(*texts: bytes) -> bytes:
    """EmbedRequest bytes with these (possibly invalid UTF-8) texts."""
    return b"".join(length_delimited(1, text) for text in texts)


def stream_item(embed: bytes) -> bytes:
    """EmbedStreamRequest bytes wrapping EmbedRequest bytes."""
    return length_delimited(1, embed)


def create_options(name: bytes) -> bytes:
    """CreateContextSetRequest bytes carrying options with this (raw) name."""
    return length_delimited(1, length_delimited(1, name))


def create_documents(*documents: bytes) -> bytes:
    """CreateContextSetRequest bytes carrying a batch of (raw) documents."""
    return length_delimited(2, b"".join(length_delimited(1, d) for d in documents))
