"""Async client of the CDE models on Triton (tritonclient.grpc.aio).

Two ways to embed texts, chosen by `embed_path`: the `cde_embed` ensemble, or `cde_tokenize`
followed by `cde_second_stage` ("direct": no ensemble overhead, truncation is checked before
the expensive stage, and a cache-miss retry does not tokenize again). Context documents go
through `cde_tokenize` + `cde_first_stage` the same way, or the `cde_context` ensemble.

Context cache protocol (see `triton_protocol`): requests carry CONTEXT_ID only. On a miss the
dataset embeddings are loaded once (single flight per context id), a one-row request carrying
them primes the cache, and the remaining rows are resent without them; a second miss (another
instance, eviction) resends with the embeddings attached to every row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from cde_server import triton_protocol as tp
from cde_server.errors import (
    BackendUnavailableError,
    CdeError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
)

logger = logging.getLogger("cde_server.triton_backend")


FloatMatrix = npt.NDArray[np.float32]
DatasetLoader = Callable[[], Awaitable[FloatMatrix]]


class BackendObserver(Protocol):
    """Receives what the metrics want to know about Triton calls."""

    def triton_call(self, model: str, seconds: float, code: str) -> None:
        """One Triton inference call finished with `code` ("OK" or a gRPC status name)."""

    def context_cache(self, hit: bool) -> None:
        """One embed chunk found (hit) or did not find (miss) its context in Triton's cache."""


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
        )


@dataclass(frozen=True)
class TritonTls:
    """TLS to Triton's gRPC port: the root certificate to trust, optionally a client identity."""

    root_certificate: Path
    certificate_chain: Path | None = None
    private_key: Path | None = None


@dataclass(frozen=True)
class ContextRef:
    """A context as the backend needs it: its id, and how to load its embeddings on a miss."""

    context_id: str
    load: DatasetLoader


@dataclass(frozen=True)
class Encoded:
    """Rows computed by Triton, in input order."""

    vectors: FloatMatrix  # [rows, hidden] raw float32
    token_counts: npt.NDArray[np.int64]  # [rows] after truncation, incl. [CLS]/[SEP]
    truncated: npt.NDArray[np.bool_]  # [rows]


@dataclass(frozen=True)
class _Tokens:
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_counts: npt.NDArray[np.int64]
    truncated: npt.NDArray[np.bool_]


class _NullObserver:
    def triton_call(self, model: str, seconds: float, code: str) -> None:
        pass

    def context_cache(self, hit: bool) -> None:
        pass


class _ContextNotCached(Exception):
    """Internal signal: Triton answered a cache miss."""


def too_long_error(truncated: npt.NDArray[np.bool_], max_tokens: int) -> InvalidArgumentError:
    """INVALID_ARGUMENT naming the texts longer than the model's limit (truncate=false)."""
    indices = [int(i) for i in np.flatnonzero(truncated)]
    shown = ", ".join(str(i) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")
    return InvalidArgumentError(
        f"{len(indices)} text(s) do not fit in the model's {max_tokens} tokens (indices {shown}) "
        "and truncate is false"
    )


class TritonBackend:
    """Embeds texts and context documents on one Triton server; maps its failures to CdeError."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        embed_path: str = "direct",
        observer: BackendObserver | None = None,
        tls: TritonTls | None = None,
    ) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._direct = embed_path == "direct"
        self._observer: BackendObserver = observer if observer is not None else _NullObserver()
        self._client = triton_aio.InferenceServerClient(
            url,
            ssl=tls is not None,
            root_certificates=_path(tls.root_certificate if tls else None),
            private_key=_path(tls.private_key if tls else None),
            certificate_chain=_path(tls.certificate_chain if tls else None),
            # No keepalive pings: Triton answers pings more frequent than every 5 minutes
            # with GOAWAY "too_many_pings", which kills calls in flight. Reconnect within
            # about a second, so a restarted Triton is used again soon after it is back. A
            # name resolving to several servers (a headless Service) is spread round robin.
            channel_args=[
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._priming: dict[str, asyncio.Future[None]] = {}

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    # --- health and model information --------------------------------------------------
    async def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether Triton answers and every model the gateway uses is ready."""
        models = dict.fromkeys(
            (*self._embed_models(), *self._context_models(), tp.MODEL_INFO_MODEL)
        )
        try:
            if not await self._client.is_server_ready(client_timeout=timeout_s):
                return False
            for model in models:
                if not await self._client.is_model_ready(model, client_timeout=timeout_s):
                    return False
        except InferenceServerException:
            return False
        return True

    async def model_info(self, timeout_s: float | None = None) -> ServedModelInfo:
        """The served model's name, fingerprint and sizes, from `cde_model_info`."""
        request = InferInput(tp.REQUEST, [1], "BYTES")
        request.set_data_from_numpy(np.array([b"info"], dtype=np.object_))
        result = await self._infer(tp.MODEL_INFO_MODEL, [request], [tp.INFO], timeout_s)
        raw = result.as_numpy(tp.INFO)
        if raw is None or raw.size != 1:
            raise InternalError("cde_model_info returned no INFO")
        value = raw.reshape(-1)[0]
        try:
            return ServedModelInfo.from_json(
                value if isinstance(value, bytes) else str(value).encode()
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f"cde_model_info returned malformed INFO: {exc}") from exc

    # --- embedding ------------------------------------------------------------------------
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
        deadline = self._deadline(timeout_s)
        context = ContextRef(context.context_id, _load_once(context.load))
        if self._direct:
            tokens = await self._tokenize_all(texts, deadline)
            if not allow_truncation and tokens.truncated.any():
                raise too_long_error(tokens.truncated, max_tokens)
            chunks = await asyncio.gather(
                *(
                    self._second_stage_chunk(tokens, start, context, deadline)
                    for start in range(0, len(texts), tp.MAX_BATCH_ROWS)
                )
            )
            return Encoded(np.concatenate(chunks), tokens.token_counts, tokens.truncated)
        parts = await asyncio.gather(
            *(
                self._embed_ensemble_chunk(
                    texts[start : start + tp.MAX_BATCH_ROWS], context, deadline
                )
                for start in range(0, len(texts), tp.MAX_BATCH_ROWS)
            )
        )
        encoded = _concat(parts)
        if not allow_truncation and encoded.truncated.any():
            raise too_long_error(encoded.truncated, max_tokens)
        return encoded

    async def embed_context(
        self, documents: Sequence[str], *, timeout_s: float | None = None
    ) -> Encoded:
        """First-stage dataset embeddings of `documents` (prefixes already applied)."""
        deadline = self._deadline(timeout_s)
        if self._direct:
            tokens = await self._tokenize_all(documents, deadline)
            chunks = await asyncio.gather(
                *(
                    self._first_stage_chunk(tokens, start, deadline)
                    for start in range(0, len(documents), tp.MAX_BATCH_ROWS)
                )
            )
            return Encoded(np.concatenate(chunks), tokens.token_counts, tokens.truncated)
        parts = await asyncio.gather(
            *(
                self._context_ensemble_chunk(documents[start : start + tp.MAX_BATCH_ROWS], deadline)
                for start in range(0, len(documents), tp.MAX_BATCH_ROWS)
            )
        )
        return _concat(parts)

    # --- direct path ------------------------------------------------------------------------
    async def _tokenize_all(self, texts: Sequence[str], deadline: float) -> _Tokens:
        parts = await asyncio.gather(
            *(
                self._tokenize_chunk(texts[start : start + tp.MAX_BATCH_ROWS], deadline)
                for start in range(0, len(texts), tp.MAX_BATCH_ROWS)
            )
        )
        width = max(p.input_ids.shape[1] for p in parts)
        return _Tokens(
            input_ids=np.concatenate([_pad_to(p.input_ids, width) for p in parts]),
            attention_mask=np.concatenate([_pad_to(p.attention_mask, width) for p in parts]),
            token_counts=np.concatenate([p.token_counts for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
        )

    async def _tokenize_chunk(self, texts: Sequence[str], deadline: float) -> _Tokens:
        text = _bytes_input(tp.TEXT, tp.text_tensor(texts))
        outputs = [tp.INPUT_IDS, tp.ATTENTION_MASK, tp.TOKEN_COUNT, tp.TRUNCATED]
        result = await self._infer(tp.TOKENIZE_MODEL, [text], outputs, self._remaining(deadline))
        mask = _output(result, tp.ATTENTION_MASK).astype(np.int64, copy=False)
        width = max(int(mask.sum(axis=1).max()), 1)  # trim padding added for batch-mates
        return _Tokens(
            input_ids=_output(result, tp.INPUT_IDS).astype(np.int64, copy=False)[:, :width],
            attention_mask=mask[:, :width],
            token_counts=_output(result, tp.TOKEN_COUNT).reshape(-1).astype(np.int64),
            truncated=_output(result, tp.TRUNCATED).reshape(-1).astype(np.bool_),
        )

    async def _first_stage_chunk(self, tokens: _Tokens, start: int, deadline: float) -> FloatMatrix:
        ids, mask = _token_inputs(tokens, start)
        result = await self._infer(
            tp.FIRST_STAGE_MODEL, [ids, mask], [tp.DATASET_EMBEDDING], self._remaining(deadline)
        )
        return _output(result, tp.DATASET_EMBEDDING).astype(np.float32, copy=False)

    async def _second_stage_chunk(
        self, tokens: _Tokens, start: int, context: ContextRef, deadline: float
    ) -> FloatMatrix:
        end = min(start + tp.MAX_BATCH_ROWS, len(tokens.token_counts))

        async def run(first: int, last: int, dataset: FloatMatrix | None) -> FloatMatrix:
            ids, mask = _token_inputs(tokens, first, last)
            inputs = [ids, mask, *self._context_inputs(context.context_id, last - first, dataset)]
            result = await self._infer(
                tp.SECOND_STAGE_MODEL, inputs, [tp.EMBEDDING], self._remaining(deadline)
            )
            return _output(result, tp.EMBEDDING).astype(np.float32, copy=False)

        return await self._with_context(start, end, context, run)

    # --- ensemble path ----------------------------------------------------------------------
    async def _embed_ensemble_chunk(
        self, texts: Sequence[str], context: ContextRef, deadline: float
    ) -> Encoded:
        collected: dict[int, Encoded] = {}

        async def run(first: int, last: int, dataset: FloatMatrix | None) -> FloatMatrix:
            text = _bytes_input(tp.TEXT, tp.text_tensor(texts[first:last]))
            inputs = [text, *self._context_inputs(context.context_id, last - first, dataset)]
            outputs = [tp.EMBEDDING, tp.TOKEN_COUNT, tp.TRUNCATED]
            result = await self._infer(
                tp.EMBED_ENSEMBLE, inputs, outputs, self._remaining(deadline)
            )
            vectors = _output(result, tp.EMBEDDING).astype(np.float32, copy=False)
            collected[first] = Encoded(
                vectors,
                _output(result, tp.TOKEN_COUNT).reshape(-1).astype(np.int64),
                _output(result, tp.TRUNCATED).reshape(-1).astype(np.bool_),
            )
            return vectors

        await self._with_context(0, len(texts), context, run)
        return _concat([collected[k] for k in sorted(collected)])

    async def _context_ensemble_chunk(self, documents: Sequence[str], deadline: float) -> Encoded:
        text = _bytes_input(tp.TEXT, tp.text_tensor(documents))
        outputs = [tp.DATASET_EMBEDDING, tp.TOKEN_COUNT, tp.TRUNCATED]
        result = await self._infer(tp.CONTEXT_ENSEMBLE, [text], outputs, self._remaining(deadline))
        return Encoded(
            _output(result, tp.DATASET_EMBEDDING).astype(np.float32, copy=False),
            _output(result, tp.TOKEN_COUNT).reshape(-1).astype(np.int64),
            _output(result, tp.TRUNCATED).reshape(-1).astype(np.bool_),
        )

    # --- cache-miss protocol ------------------------------------------------------------------
    async def _with_context(
        self,
        start: int,
        end: int,
        context: ContextRef,
        run: Callable[[int, int, FloatMatrix | None], Awaitable[FloatMatrix]],
    ) -> FloatMatrix:
        """Run rows [start, end) without embeddings; on a miss prime the cache and retry."""
        try:
            vectors = await run(start, end, None)
        except _ContextNotCached:
            self._observer.context_cache(hit=False)
        else:
            self._observer.context_cache(hit=True)
            return vectors

        async def prime() -> FloatMatrix:
            return await run(start, start + 1, await context.load())

        first = await self._prime(context.context_id, prime)
        if first is not None:
            if end - start == 1:
                return first
            try:
                rest = await run(start + 1, end, None)
            except _ContextNotCached:
                rest = await run(start + 1, end, await context.load())
            return np.concatenate([first, rest])
        try:  # another task primed the cache meanwhile
            return await run(start, end, None)
        except _ContextNotCached:
            return await run(start, end, await context.load())

    async def _prime(
        self, context: str, run_one: Callable[[], Awaitable[FloatMatrix]]
    ) -> FloatMatrix | None:
        """Run the priming request unless another task is priming `context`; then wait for it."""
        pending = self._priming.get(context)
        if pending is not None:
            await asyncio.shield(pending)
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._priming[context] = done
        try:
            return await run_one()
        finally:
            del self._priming[context]
            done.set_result(None)

    @staticmethod
    def _context_inputs(context: str, rows: int, dataset: FloatMatrix | None) -> list[InferInput]:
        inputs = [_bytes_input(tp.CONTEXT_ID, tp.context_id_tensor(context, rows))]
        if dataset is not None:
            matrix = np.ascontiguousarray(tp.dataset_embeddings_tensor(dataset, rows))
            tensor = InferInput(tp.DATASET_EMBEDDINGS, list(matrix.shape), "FP32")
            tensor.set_data_from_numpy(matrix)
            inputs.append(tensor)
        return inputs

    # --- transport ----------------------------------------------------------------------------
    async def _infer(
        self,
        model: str,
        inputs: list[InferInput],
        outputs: list[str],
        timeout_s: float | None,
    ) -> Any:
        """One inference call; Triton failures become CdeError (or _ContextNotCached)."""
        started = time.perf_counter()
        code = "OK"
        try:
            return await self._client.infer(
                model,
                inputs,
                outputs=[InferRequestedOutput(name) for name in outputs],
                client_timeout=timeout_s if timeout_s is not None else self._timeout_s,
            )
        except InferenceServerException as exc:
            code = _status_name(exc)
            message = str(exc.message() or "")
            if code == "NOT_FOUND" and tp.is_context_not_cached(message):
                code = "CONTEXT_NOT_CACHED"
                raise _ContextNotCached(message) from None
            raise _backend_error(model, code, message) from None
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self._observer.triton_call(model, time.perf_counter() - started, code)

    def _deadline(self, timeout_s: float | None) -> float:
        budget = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        return time.monotonic() + budget

    @staticmethod
    def _remaining(deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("deadline exceeded while waiting for the model")
        return remaining

    def _embed_models(self) -> tuple[str, ...]:
        if self._direct:
            return (tp.TOKENIZE_MODEL, tp.SECOND_STAGE_MODEL)
        return (tp.EMBED_ENSEMBLE,)

    def _context_models(self) -> tuple[str, ...]:
        if self._direct:
            return (tp.TOKENIZE_MODEL, tp.FIRST_STAGE_MODEL)
        return (tp.CONTEXT_ENSEMBLE,)


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _load_once(load: DatasetLoader) -> DatasetLoader:
    """`load`, run at most once however many chunks of one request miss the cache."""
    task: asyncio.Task[FloatMatrix] | None = None

    async def load_once() -> FloatMatrix:
        nonlocal task
        if task is None:
            task = asyncio.ensure_future(load())
        return await asyncio.shield(task)

    return load_once


def _status_name(exc: InferenceServerException) -> str:
    """The status name (UNAVAILABLE) of tritonclient's "StatusCode.UNAVAILABLE"."""
    status = str(exc.status() or "UNKNOWN")
    return status.rsplit(".", 1)[-1]


def _backend_error(model: str, code: str, message: str) -> CdeError:
    """The domain error for a failed Triton call."""
    if code in ("UNAVAILABLE", "CANCELLED") or (code == "NOT_FOUND" and "model" in message):
        return BackendUnavailableError(f"inference server unavailable ({model}): {message}")
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(f"the model did not answer in time ({model})")
    if code == "INVALID_ARGUMENT":
        return InvalidArgumentError(f"the model rejected the input: {message}")
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhaustedError(f"the inference server is overloaded: {message}")
    logger.error("triton %s failed with %s: %s", model, code, message)
    return InternalError(f"inference failed ({model}, {code})")


def _bytes_input(name: str, values: npt.NDArray[np.object_]) -> InferInput:
    tensor = InferInput(name, list(values.shape), "BYTES")
    tensor.set_data_from_numpy(values)
    return tensor


def _token_inputs(tokens: _Tokens, start: int, end: int | None = None) -> list[InferInput]:
    """INPUT_IDS and ATTENTION_MASK of rows [start, end), trimmed to their longest row."""
    stop = min(start + tp.MAX_BATCH_ROWS, len(tokens.token_counts)) if end is None else end
    mask = tokens.attention_mask[start:stop]
    width = max(int(mask.sum(axis=1).max()), 1)
    inputs = []
    for name, values in ((tp.INPUT_IDS, tokens.input_ids[start:stop]), (tp.ATTENTION_MASK, mask)):
        block = np.ascontiguousarray(values[:, :width])
        tensor = InferInput(name, list(block.shape), "INT64")
        tensor.set_data_from_numpy(block)
        inputs.append(tensor)
    return inputs


def _pad_to(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    if values.shape[1] == width:
        return values
    return np.pad(values, ((0, 0), (0, width - values.shape[1])))


def _output(result: Any, name: str) -> npt.NDArray[Any]:
    values = result.as_numpy(name)
    if values is None:
        raise InternalError(f"the model returned no {name}")
    return np.asarray(values)


def _concat(parts: Sequence[Encoded]) -> Encoded:
    return Encoded(
        np.concatenate([p.vectors for p in parts]),
        np.concatenate([p.token_counts for p in parts]),
        np.concatenate([p.truncated for p in parts]),
    )
