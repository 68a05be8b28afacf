"""Request encoders for the two client streams, and the reassembly of EmbedStream answers."""

from __future__ import annotations

from collections.abc import Sequence

from cde.v1 import embedding_service_pb2 as pb
from google.protobuf.message import Message

from cde_client import conversions
from cde_client._chunking import (
    DOCUMENT_BATCH_COUNT,
    PER_TEXT_OVERHEAD_BYTES,
    document_batch_bytes,
    embed_spans,
)
from cde_client._progress import Progress
from cde_client.errors import CdeError, ProtocolError
from cde_client.models import EmbedResult, ModelInfo


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    return value


def text_list(texts: Sequence[str], what: str = "texts") -> list[str]:
    """`texts` as a list, refusing a bare string (which would embed each character)."""
    if isinstance(texts, str | bytes):
        raise TypeError(f"{what} must be a sequence of strings, not a single string; use [text]")
    return [_require_text(text, f"each of {what}") for text in texts]


class DocumentEncoder:
    """CreateContextSet messages: the options, then documents in size-bounded batches."""

    def __init__(
        self, options: pb.CreateContextSetRequest, info: ModelInfo | None, progress: Progress
    ) -> None:
        self._options = options
        self._max_bytes = document_batch_bytes(info)
        self._progress = progress
        self._pending: list[str] = []
        self._pending_bytes = 0

    def head(self) -> list[Message]:
        return [self._options]

    def encode(self, item: str) -> list[Message]:
        document = _require_text(item, "each document")
        size = len(document.encode("utf-8", errors="surrogatepass")) + PER_TEXT_OVERHEAD_BYTES
        sent: list[Message] = []
        if self._pending and self._pending_bytes + size > self._max_bytes:
            sent.append(self._flush())
        self._pending.append(document)
        self._pending_bytes += size
        if len(self._pending) >= DOCUMENT_BATCH_COUNT:
            sent.append(self._flush())
        return sent

    def finish(self) -> list[Message]:
        sent = [self._flush()] if self._pending else []
        self._progress.set_status("building the context set on the server")
        return sent

    def _flush(self) -> Message:
        batch = conversions.document_batch(self._pending)
        self._progress.update(len(self._pending))
        self._pending, self._pending_bytes = [], 0
        return batch


class EmbedStreamEncoder:
    """EmbedStream messages: each caller batch split into server-sized requests.

    `pieces` records how many requests each batch became; it is appended to before the
    requests are handed to gRPC, so it is always ahead of the answers.
    """

    def __init__(
        self,
        info: ModelInfo | None,
        *,
        prompt: str | None,
        context: str | None,
        normalize: bool,
        truncate: bool,
    ) -> None:
        self._info = info
        self._prompt = prompt
        self._context = context
        self._normalize = normalize
        self._truncate = truncate
        self.pieces: list[int] = []

    def head(self) -> list[Message]:
        return []

    def encode(self, item: Sequence[str]) -> list[Message]:
        texts = text_list(item, "each batch")
        spans = embed_spans(texts, self._info)
        messages: list[Message] = [
            pb.EmbedStreamRequest(
                request=conversions.embed_request(
                    texts[start:stop],
                    prompt=self._prompt,
                    context=self._context,
                    normalize=self._normalize,
                    truncate=self._truncate,
                )
            )
            for start, stop in spans
        ]
        self.pieces.append(len(messages))
        return messages

    def finish(self) -> list[Message]:
        return []


class StreamAssembler:
    """Turns EmbedStream answers (one per request, in order) back into one result per batch."""

    def __init__(self, encoder: EmbedStreamEncoder) -> None:
        self._encoder = encoder
        self._next_sequence = 0
        self._batch = 0
        self._received = 0
        self._parts: list[EmbedResult] = []
        self._error: CdeError | None = None

    def accept(self, response: pb.EmbedStreamResponse) -> list[EmbedResult | CdeError]:
        """The batches completed by this answer (zero or one)."""
        if response.sequence != self._next_sequence:
            raise ProtocolError(
                f"stream answer {response.sequence} arrived where {self._next_sequence} was due"
            )
        if self._batch >= len(self._encoder.pieces):
            raise ProtocolError(f"stream answer {response.sequence} has no request")
        self._next_sequence += 1
        outcome = conversions.stream_item(response)
        if isinstance(outcome, CdeError):
            self._error = self._error or outcome
        else:
            self._parts.append(outcome)
        self._received += 1
        if self._received < self._encoder.pieces[self._batch]:
            return []
        # A batch fails as a whole; its first failed piece says why.
        done: EmbedResult | CdeError = (
            self._error if self._error is not None else conversions.merge_embed_results(self._parts)
        )
        self._batch += 1
        self._parts, self._error, self._received = [], None, 0
        return [done]

    def finish(self) -> None:
        """Check that every batch was answered."""
        if self._batch != len(self._encoder.pieces):
            raise ProtocolError(
                f"the stream ended after {self._batch} of {len(self._encoder.pieces)} batches"
            )
