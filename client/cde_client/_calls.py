"""The table of RPCs the client makes: path, shape, message types and idempotency.

Both transports (sync and asyncio) make their calls from these entries only. Paths come
from the generated descriptors, so they cannot drift from the proto.

The standard health service (grpc.health.v1) is described here too, from its two tiny
messages built in a private descriptor pool: this keeps grpcio-health-checking out of the
base dependencies and cannot clash with it when both are imported.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cde.v1 import embedding_service_pb2 as pb
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class CallKind(enum.Enum):
    """The shape of an RPC."""

    UNARY = "unary_unary"
    CLIENT_STREAM = "stream_unary"
    BIDI_STREAM = "stream_stream"


@dataclass(frozen=True)
class Rpc(Generic[RequestT, ResponseT]):
    """One RPC: what a transport needs to call it, and whether repeating it is harmless."""

    path: str
    kind: CallKind
    response_type: type[ResponseT]
    idempotent: bool
    """Safe to retry after an UNAVAILABLE (the call has no effect, or the same effect twice)."""

    @property
    def serializer(self) -> Callable[[RequestT], bytes]:
        return _serialize

    @property
    def deserializer(self) -> Callable[[bytes], ResponseT]:
        return self.response_type.FromString


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


_SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"]


def _method(
    name: str, kind: CallKind, response_type: type[ResponseT], *, idempotent: bool
) -> Rpc[Any, ResponseT]:
    method = _SERVICE.methods_by_name[name]
    if method.output_type.full_name != response_type.DESCRIPTOR.full_name:
        raise TypeError(f"{name} returns {method.output_type.full_name}")
    return Rpc(f"/{_SERVICE.full_name}/{name}", kind, response_type, idempotent)


U, CS, BS = CallKind.UNARY, CallKind.CLIENT_STREAM, CallKind.BIDI_STREAM

EMBED: Rpc[pb.EmbedRequest, pb.EmbedResponse] = _method(
    "Embed", U, pb.EmbedResponse, idempotent=True
)
EMBED_STREAM: Rpc[pb.EmbedStreamRequest, pb.EmbedStreamResponse] = _method(
    "EmbedStream", BS, pb.EmbedStreamResponse, idempotent=False
)
# Each create_context_set call sends one idempotency key with all its tries: a retried
# create returns the revision an earlier try stored, never a second one.
CREATE_CONTEXT_SET: Rpc[pb.CreateContextSetRequest, pb.CreateContextSetResponse] = _method(
    "CreateContextSet", CS, pb.CreateContextSetResponse, idempotent=True
)
GET_CONTEXT_SET: Rpc[pb.GetContextSetRequest, pb.GetContextSetResponse] = _method(
    "GetContextSet", U, pb.GetContextSetResponse, idempotent=True
)
LIST_CONTEXT_SETS: Rpc[pb.ListContextSetsRequest, pb.ListContextSetsResponse] = _method(
    "ListContextSets", U, pb.ListContextSetsResponse, idempotent=True
)
# A repeated delete would report NOT_FOUND for a delete that worked: not retried.
DELETE_CONTEXT_SET: Rpc[pb.DeleteContextSetRequest, pb.DeleteContextSetResponse] = _method(
    "DeleteContextSet", U, pb.DeleteContextSetResponse, idempotent=False
)
# Activating the revision that is already active is a no-op: safe to retry.
ACTIVATE_CONTEXT_SET: Rpc[pb.ActivateContextSetRequest, pb.ActivateContextSetResponse] = _method(
    "ActivateContextSet", U, pb.ActivateContextSetResponse, idempotent=True
)
LIST_PROMPTS: Rpc[pb.ListPromptsRequest, pb.ListPromptsResponse] = _method(
    "ListPrompts", U, pb.ListPromptsResponse, idempotent=True
)
PUT_PROMPT: Rpc[pb.PutPromptRequest, pb.PutPromptResponse] = _method(
    "PutPrompt", U, pb.PutPromptResponse, idempotent=True
)
DELETE_PROMPT: Rpc[pb.DeletePromptRequest, pb.DeletePromptResponse] = _method(
    "DeletePrompt", U, pb.DeletePromptResponse, idempotent=False
)
GET_MODEL_INFO: Rpc[pb.GetModelInfoRequest, pb.GetModelInfoResponse] = _method(
    "GetModelInfo", U, pb.GetModelInfoResponse, idempotent=True
)


# --- grpc.health.v1 -------------------------------------------------------------------------


def _health_messages() -> tuple[type[Message], type[Message]]:
    """HealthCheckRequest{string service = 1} and HealthCheckResponse{ServingStatus status = 1}."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="cde_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(
        name="service",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    response = proto.message_type.add(name="HealthCheckResponse")
    status_enum = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status_enum.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
        ),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()

HEALTH_CHECK: Rpc[Message, Message] = Rpc(
    "/grpc.health.v1.Health/Check", U, HealthCheckResponse, idempotent=True
)

ALL_RPCS: tuple[Rpc[Any, Any], ...] = (
    EMBED,
    EMBED_STREAM,
    CREATE_CONTEXT_SET,
    GET_CONTEXT_SET,
    LIST_CONTEXT_SETS,
    DELETE_CONTEXT_SET,
    ACTIVATE_CONTEXT_SET,
    LIST_PROMPTS,
    PUT_PROMPT,
    DELETE_PROMPT,
    GET_MODEL_INFO,
    HEALTH_CHECK,
)
