"""Typed Python client of the cde-serve gateway (contextual document embeddings over gRPC).

    from cde_client import CdeClient

    with CdeClient("localhost:50051") as client:
        client.create_context_set("my-corpus", documents)
        queries = client.embed_queries(["what is CDE?"], context="my-corpus").embeddings
        docs = client.embed_documents(documents, context="my-corpus").embeddings
        scores = queries @ docs.T

`AsyncCdeClient` has the same methods as coroutines (and async iterators).
"""

from cde_client.async_client import AsyncCdeClient
from cde_client.errors import (
    AlreadyExists,
    CdeError,
    DeadlineExceeded,
    FailedPrecondition,
    InconsistentResult,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from cde_client.models import (
    ContextSampling,
    ContextSet,
    ContextSetRevision,
    EmbedResult,
    HealthStatus,
    Limits,
    ModelInfo,
    Prompt,
)
from cde_client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from cde_client.sync_client import CdeClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRY",
    "AlreadyExists",
    "AsyncCdeClient",
    "CdeClient",
    "CdeError",
    "ContextSampling",
    "ContextSet",
    "ContextSetRevision",
    "DeadlineExceeded",
    "EmbedResult",
    "FailedPrecondition",
    "HealthStatus",
    "InconsistentResult",
    "Internal",
    "InvalidArgument",
    "Limits",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Prompt",
    "ProtocolError",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
