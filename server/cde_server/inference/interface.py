"""What the gateway needs from inference, independent of how Triton is reached.

`Inference` is the interface the gateway's service and health monitor depend on (the endpoint
pool implements it; tests can pass anything with these methods). The value types travel
between the gateway and every inference piece.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]
DatasetLoader = Callable[[], Awaitable[FloatMatrix]]


@dataclass(frozen=True)
class ServedModelInfo:
    """What `cde_model_info` reports about the model Triton serves."""

    name: str
    fingerprint: str
    hidden_size: int
    corpus_size: int
    max_tokens: int
    dtype: str
    device: str
    family: str = ""
    """"v1" (cde-small-v1), "v2" (cde-small-v2) or "demo"; "" when the Triton model repository
    predates the field."""
    vocab_size: int = 0
    """Token ids of the served model's tokenizer lie in [0, vocab_size) (0: not reported)."""

    @classmethod
    def from_json(cls, data: bytes) -> ServedModelInfo:
        """Parse the INFO tensor's JSON object."""
        fields: dict[str, Any] = json.loads(data)
        return cls(
            name=str(fields["name"]),
            fingerprint=str(fields["fingerprint"]),
            hidden_size=int(fields["hidden_size"]),
            corpus_size=int(fields["corpus_size"]),
            max_tokens=int(fields["max_tokens"]),
            dtype=str(fields["dtype"]),
            device=str(fields["device"]),
            family=str(fields.get("family", "")),
            vocab_size=int(fields.get("vocab_size", 0)),
        )


@dataclass(frozen=True)
class ContextRef:
    """A context as inference needs it: its id, and how to load its embeddings on a miss."""

    context_id: str
    load: DatasetLoader


@dataclass(frozen=True)
class Encoded:
    """Rows computed by the model, in input order."""

    vectors: FloatMatrix  # [rows, hidden] raw float32
    token_counts: npt.NDArray[np.int64]  # [rows] after truncation, incl. [CLS]/[SEP]
    truncated: npt.NDArray[np.bool_]  # [rows]

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        """The rows of `parts`, in order."""
        return Encoded(
            np.concatenate([p.vectors for p in parts]),
            np.concatenate([p.token_counts for p in parts]),
            np.concatenate([p.truncated for p in parts]),
        )


class Inference(Protocol):
    """Embedding work and model information, as the gateway's service uses them."""

    async def model_info(self, timeout_s: float | None = None) -> ServedModelInfo:
        """The served model's name, fingerprint and sizes."""

    async def embed(
        self,
        texts: Sequence[str],
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        """Second-stage embeddings of `texts` (prefixes already applied) under `context`."""

    async def embed_tokens(
        self,
        rows: Sequence[Sequence[int]],
        prefix: str,
        context: ContextRef,
        *,
        max_tokens: int,
        allow_truncation: bool = True,
        timeout_s: float | None = None,
    ) -> Encoded:
        """Second-stage embeddings of pre-tokenized `rows` (the served tokenizer's ids, without
        special tokens), each after the tokens of the prompt `prefix`, under `context`."""

    async def embed_context(
        self, documents: Sequence[str], *, timeout_s: float | None = None
    ) -> Encoded:
        """First-stage dataset embeddings of `documents` (prefixes already applied)."""

    async def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether inference can take work now."""

    def describe(self) -> str:
        """Where inference runs and in what state, for logs."""

    def on_availability(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(available)` whenever inference becomes available or unavailable."""

    async def close(self) -> None:
        """Release connections."""


class InferenceObserver(Protocol):
    """Receives what the metrics want to know about inference calls and endpoints."""

    def triton_call(self, model: str, seconds: float, code: str) -> None:
        """One Triton inference call finished with `code` ("OK" or a gRPC status name)."""

    def context_cache(self, hit: bool) -> None:
        """One embed chunk found (hit) or did not find (miss) its context in Triton's cache."""

    def endpoint_up(self, endpoint: str, up: bool) -> None:
        """`endpoint` was marked up (takes requests) or down."""

    def endpoint_outstanding(self, endpoint: str, count: int) -> None:
        """`count` calls are now in flight on `endpoint`."""

    def endpoint_call(self, endpoint: str, result: str) -> None:
        """One call on `endpoint` ended: "ok", "unavailable" (retried) or "error"."""


class NullObserver:
    """An `InferenceObserver` that records nothing (no metrics wanted)."""

    def triton_call(self, model: str, seconds: float, code: str) -> None:
        pass

    def context_cache(self, hit: bool) -> None:
        pass

    def endpoint_up(self, endpoint: str, up: bool) -> None:
        pass

    def endpoint_outstanding(self, endpoint: str, count: int) -> None:
        pass

    def endpoint_call(self, endpoint: str, result: str) -> None:
        pass
