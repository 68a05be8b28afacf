"""cde_second_stage: rows of all requests grouped by CONTEXT_ID, one model call per context.

Prepared contexts live in a per-instance LRU bounded in bytes. A request that carries
DATASET_EMBEDDINGS (re)fills it; one that does not and names an uncached context gets NOT_FOUND
with CONTEXT_NOT_CACHED_MARKER, so the caller resends it with the embeddings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cde_server.triton.handlers import tokens
from cde_server.triton.handlers.adapter import (
    Inputs,
    RequestError,
    Result,
    batch_then_isolate,
    free_accelerator_memory,
    load_stage_model,
    run_isolated,
)
from cde_server.triton.handlers.context_cache import ContextCache
from cde_server.triton.protocol import (
    ATTENTION_MASK,
    CONTEXT_ID,
    CONTEXT_ID_LENGTH,
    CONTEXT_NOT_CACHED_MARKER,
    DATASET_EMBEDDINGS,
    DEFAULT_CONTEXT_CACHE_BYTES,
    EMBEDDING,
    INPUT_IDS,
    context_id,
)

if TYPE_CHECKING:
    from cde_model import EmbeddingModel, PreparedContext

Array = npt.NDArray[Any]

logger = logging.getLogger("cde_server.triton.handlers")

_CONTEXT_ID_FORMAT = re.compile(f"[0-9a-f]{{{CONTEXT_ID_LENGTH}}}")


def not_cached_error(context: str) -> RequestError:
    """The documented cache-miss error (status NOT_FOUND, message with the marker)."""
    return RequestError(
        f"{CONTEXT_NOT_CACHED_MARKER}: context {context} is not cached by this instance; "
        f"resend the request with {DATASET_EMBEDDINGS}",
        "NOT_FOUND",
    )


def decode_context_ids(array: Array, rows: int) -> list[str]:
    """CONTEXT_ID [rows, 1] as strings; RequestError unless each is 32 lowercase hex digits."""
    if array.shape != (rows, 1):
        raise RequestError(f"{CONTEXT_ID} must be [{rows}, 1], got {list(array.shape)}")
    ids = []
    for item in array[:, 0]:
        text = item.decode("ascii", errors="replace") if isinstance(item, bytes) else str(item)
        if not _CONTEXT_ID_FORMAT.fullmatch(text):
            raise RequestError(
                f"{CONTEXT_ID} must be {CONTEXT_ID_LENGTH} lowercase hex digits "
                f"(cde_server.triton.protocol.context_id), got {text[:80]!r}"
            )
        ids.append(text)
    return ids


@dataclass(frozen=True)
class _Pending:
    rows: tokens.RequestTokens
    context_ids: list[str]  # one per row


@dataclass(frozen=True)
class _Member:
    """The rows of one request that use one context."""

    index: int  # of the request in the batch
    positions: Array  # row positions inside the request
    rows: tokens.RequestTokens


class SecondStageHandler:
    """Embeds texts conditioned on a cached (or supplied) context."""

    required_inputs = (INPUT_IDS, ATTENTION_MASK, CONTEXT_ID)
    optional_inputs = (DATASET_EMBEDDINGS,)

    def __init__(self, model: EmbeddingModel, cache_bytes: int) -> None:
        self.model = model
        self.cache: ContextCache[PreparedContext] = ContextCache(cache_bytes)
        self.vocab_size: int | None = getattr(model.tokenizer, "vocab_size", None)
        self.corpus_size = model.info.corpus_size
        self.hidden_size = model.info.hidden_size

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> SecondStageHandler:
        """Load the model named by the parameters on `device`; the cache gets
        parameters["context_cache_bytes"]."""
        cache_bytes = int(parameters.get("context_cache_bytes", "0"))
        return cls(load_stage_model(parameters, device), cache_bytes or DEFAULT_CONTEXT_CACHE_BYTES)

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        results: list[Result] = [{} for _ in batch]
        pending: dict[int, _Pending] = {}
        contexts: dict[str, PreparedContext] = {}  # held for this batch, whatever the LRU does
        for index, inputs in enumerate(batch):
            try:
                request = self._parse(inputs)
                if DATASET_EMBEDDINGS in inputs:
                    self._fill(request.context_ids, inputs[DATASET_EMBEDDINGS], contexts)
                pending[index] = request
            except RequestError as exc:
                results[index] = exc
            except Exception as exc:
                results[index] = run_isolated("second stage", exc)
        for index, request in list(pending.items()):
            for context in dict.fromkeys(request.context_ids):
                if context not in contexts:
                    cached = self.cache.get(context)
                    if cached is None:
                        results[index] = not_cached_error(context)
                        del pending[index]
                        break
                    contexts[context] = cached
        outputs = {
            index: np.empty((request.rows.rows, self.hidden_size), dtype=np.float32)
            for index, request in pending.items()
        }
        failed: dict[int, RequestError] = {}
        for context, members in self._groups(pending).items():
            self._embed_group(contexts[context], members, outputs, failed)
        for index in pending:
            results[index] = failed.get(index) or {EMBEDDING: outputs[index]}
        return results

    def _parse(self, inputs: Inputs) -> _Pending:
        rows = tokens.request_tokens(
            inputs[INPUT_IDS],
            inputs[ATTENTION_MASK],
            max_tokens=self.model.info.max_tokens,
            vocab_size=self.vocab_size,
        )
        return _Pending(rows, decode_context_ids(inputs[CONTEXT_ID], rows.rows))

    def _fill(
        self, context_ids: list[str], embeddings: Array, contexts: dict[str, PreparedContext]
    ) -> None:
        """Validate the supplied dataset embeddings and (re)fill the cache with them."""
        expected = (len(context_ids), self.corpus_size, self.hidden_size)
        if embeddings.shape != expected:
            raise RequestError(
                f"{DATASET_EMBEDDINGS} must be [rows, N={self.corpus_size}, hidden="
                f"{self.hidden_size}] = {list(expected)}, got {list(embeddings.shape)}"
            )
        for context in dict.fromkeys(context_ids):
            matrix = embeddings[context_ids.index(context)]
            if not np.isfinite(matrix).all():
                raise RequestError(f"{DATASET_EMBEDDINGS} contain NaN or infinite values")
            if context_id(matrix) != context:
                raise RequestError(
                    f"{CONTEXT_ID} {context} is not the content hash of the supplied "
                    f"{DATASET_EMBEDDINGS} (cde_server.triton.protocol.context_id)"
                )
            if context in contexts:
                continue
            prepared = self.cache.get(context) if context in self.cache else None
            if prepared is None:
                try:  # copy: the input lives in shared memory that is reused after this call
                    prepared = self.model.prepare_context(np.array(matrix, dtype=np.float32))
                except ValueError as exc:
                    raise RequestError(f"{DATASET_EMBEDDINGS} rejected: {exc}") from exc
                if not self.cache.put(context, prepared):
                    logger.warning(
                        "context of %d bytes exceeds context_cache_bytes=%d: not cached",
                        prepared.nbytes,
                        self.cache.budget_bytes,
                    )
            contexts[context] = prepared

    @staticmethod
    def _groups(pending: Mapping[int, _Pending]) -> dict[str, list[_Member]]:
        """context id -> the rows of each request that use it."""
        groups: dict[str, list[_Member]] = {}
        for index, request in pending.items():
            ids = np.array(request.context_ids)
            for context in dict.fromkeys(request.context_ids):
                positions = np.flatnonzero(ids == context)
                member = _Member(index, positions, tokens.take_rows(request.rows, positions))
                groups.setdefault(context, []).append(member)
        return groups

    def _embed_group(
        self,
        context: PreparedContext,
        members: list[_Member],
        outputs: dict[int, Array],
        failed: dict[int, RequestError],
    ) -> None:
        """One model call for all rows sharing `context`; on failure, retry request by request
        so that only the failing request gets an error."""
        members = [member for member in members if member.index not in failed]
        if not members:
            return

        def embed(chosen: list[_Member]) -> None:
            self._embed(context, chosen, outputs)

        for member, error in batch_then_isolate("second stage", members, embed):
            failed[member.index] = error

    def _embed(
        self, context: PreparedContext, members: list[_Member], outputs: dict[int, Array]
    ) -> None:
        import torch

        joined = tokens.join([member.rows for member in members])
        with torch.inference_mode():
            embedded = self.model.second_stage(
                torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask), context
            )
        array = embedded.detach().to("cpu", torch.float32).numpy()
        pieces = tokens.split(array, [member.rows.rows for member in members])
        for member, piece in zip(members, pieces, strict=True):
            outputs[member.index][member.positions] = piece

    def close(self) -> None:
        """Drop the cache and the model, and return their accelerator memory."""
        self.cache.clear()
        del self.model
        free_accelerator_memory()
