"""How to split texts into requests the server accepts (count and message-size limits)."""

from __future__ import annotations

from collections.abc import Sequence

from cde_client.models import ModelInfo

MESSAGE_RESERVE_BYTES = 16 * 1024
"""Room left in each message for names, options and framing."""
PER_TEXT_OVERHEAD_BYTES = 8
"""Protobuf tag and length prefix of one repeated string (upper bound)."""
PER_ROW_OVERHEAD_BYTES = 8
"""A token count and slack per returned embedding row."""
DOCUMENT_BATCH_COUNT = 256
"""Documents per CreateContextSet message: small enough for a lively progress bar."""
DOCUMENT_BATCH_BYTES = 2 * 1024 * 1024
"""Upper bound of one CreateContextSet message's documents (below gRPC's 4 MiB default)."""


def embed_spans(texts: Sequence[str], info: ModelInfo | None) -> list[tuple[int, int]]:
    """[start, stop) spans covering `texts` in order, each small enough for one Embed call.

    A span holds at most `max_texts_per_request` texts; its request and its response (rows
    of `hidden_size` float32) stay under `max_message_bytes`. A single text that alone breaks
    the byte budget gets its own span (the server then explains what is wrong with it).
    An empty input gives one empty span, so the server reports the error.
    """
    if not texts:
        return [(0, 0)]
    max_count = len(texts)
    max_bytes: int | None = None
    if info is not None:
        limits = info.limits
        if limits.max_texts_per_request > 0:
            max_count = limits.max_texts_per_request
        if limits.max_message_bytes > 0:
            max_bytes = max(1, limits.max_message_bytes - MESSAGE_RESERVE_BYTES)
            row_bytes = info.hidden_size * 4 + PER_ROW_OVERHEAD_BYTES
            max_count = max(1, min(max_count, max_bytes // row_bytes))
    return _spans(texts, max_count, max_bytes)


def document_batch_bytes(info: ModelInfo | None) -> int:
    """Upper bound of the documents' bytes in one CreateContextSet message."""
    if info is not None and info.limits.max_message_bytes > 0:
        return max(
            1, min(DOCUMENT_BATCH_BYTES, info.limits.max_message_bytes - MESSAGE_RESERVE_BYTES)
        )
    return DOCUMENT_BATCH_BYTES


def _spans(texts: Sequence[str], max_count: int, max_bytes: int | None) -> list[tuple[int, int]]:
    if not texts:
        return []
    if max_bytes is None or sum(map(len, texts)) * 4 + len(texts) * PER_TEXT_OVERHEAD_BYTES <= (
        max_bytes
    ):
        # Fast path: even at 4 UTF-8 bytes per character the byte budget holds.
        return [
            (start, min(start + max_count, len(texts))) for start in range(0, len(texts), max_count)
        ]
    spans: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, text in enumerate(texts):
        text_bytes = len(text.encode("utf-8", errors="surrogatepass")) + PER_TEXT_OVERHEAD_BYTES
        if index > start and (index - start >= max_count or size + text_bytes > max_bytes):
            spans.append((start, index))
            start, size = index, 0
        size += text_bytes
    spans.append((start, len(texts)))
    return spans
