"""The gateway's async client of one Triton server (tritonclient.grpc.aio).

`TritonEndpoint` owns the channel, turns Triton's failures into the gateway's errors and
embeds through one of two paths, chosen by `embed_path`: `DirectPath` (tokenize, then a stage
model) or `EnsemblePath` (`cde_embed` / `cde_context`). Both use the cache-miss protocol of
`cache_miss`. With `tokenizer="auto"` the direct path tokenizes in the gateway with the
tokenizer `cde_model_info` hands out (fetched on first use, again when the served model's
fingerprint changes); a repository that does not hand it out, or `tokenizer="off"`, keeps
`cde_tokenize`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from cde_server.errors import (
    DeadlineExceededError,
    InferenceBusyError,
    InferenceUnavailableError,
    InternalError,
    InvalidArgumentError,
    ModelFailedError,
    ResourceExhaustedError,
    ServiceError,
)
from cde_server.inference.cache_miss import ContextNotCached, ContextPrimer, load_once
from cde_server.inference.deadlines import Deadline
from cde_server.inference.direct_path import DirectPath
from cde_server.inference.ensemble_path import EnsemblePath
from cde_server.inference.interface import (
    ContextRef,
    Encoded,
    FloatMatrix,
    InferenceObserver,
    NullObserver,
    ServedModelInfo,
)
from cde_server.inference.local_tokenizer import LocalTokenizer
from cde_server.triton import protocol as tp

logger = logging.getLogger("cde_server.inference.triton_endpoint")

_STUB_FAILED = "is not healthy"  # Triton: "Stub process '<model>_0_0' is not healthy."
_QUEUE_FULL = "Exceeds maximum queue size"  # Triton (UNAVAILABLE): the model's queue is full
QUEUE_FULL_RETRY_S = 0.5
PROBE_CONTEXT_ID = "0" * tp.CONTEXT_ID_LENGTH  # never a real context: the stub answers a miss


@dataclass(frozen=True)
class TritonTls:
    """TLS to Triton's gRPC port: the root certificate to trust, optionally a client identity."""

    root_certificate: Path
    certificate_chain: Path | None = None
    private_key: Path | None = None


class TritonEndpoint:
    """Embeds texts and context documents on one Triton server; maps its failures to errors."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        embed_path: str = "direct",
        observer: InferenceObserver | None = None,
        tls: TritonTls | None = None,
        secret: str | None = None,
        tokenizer: str = "auto",
    ) -> None:
        """`secret`: what a restricted Triton requires (sent with every call); `tokenizer`:
        "auto" (tokenize in the gateway when Triton hands out its tokenizer) or "off"."""
        self.url = url
        self._headers = tp.secret_headers(secret)
        self._timeout_s = timeout_s
        self._observer: InferenceObserver = observer if observer is not None else NullObserver()
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
        primer = ContextPrimer(self._observer)
        self._local: LocalTokenizer | None = None
        self._local_known = False  # whether _local is what the served model hands out
        self._local_lock = asyncio.Lock()
        self._direct = DirectPath(  # also for pre-tokenized input
            self._infer, primer, self._local_tokenizer if tokenizer == "auto" else None
        )
        self._path: DirectPath | EnsemblePath = (
            self._direct if embed_path == "direct" else EnsemblePath(self._infer, primer)
        )

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    def describe(self) -> str:
        """The endpoint's address, for logs."""
        return self.url

    # --- health and model information --------------------------------------------------
    async def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether Triton answers and every model the gateway uses is ready."""
        models = dict.fromkeys(
            (*self._path.embed_models, *self._path.context_models, tp.MODEL_INFO_MODEL)
        )
        try:
            if not await self._client.is_server_ready(
                headers=self._headers, client_timeout=timeout_s
            ):
                return False
            for model in models:
                if not await self._client.is_model_ready(
                    model, headers=self._headers, client_timeout=timeout_s
                ):
                    return False
        except InferenceServerException:
            return False
        return True

    async def model_info(self, timeout_s: float | None = None) -> ServedModelInfo:
        """The served model's name, fingerprint and sizes, from `cde_model_info`."""
        deadline = Deadline.within(timeout_s, self._timeout_s)
        value = await self._model_info_answer(b"info", deadline)
        try:
            info = ServedModelInfo.from_json(value)
        except (ValueError, KeyError, TypeError) as exc:
            raise InternalError(f"cde_model_info returned malformed INFO: {exc}") from exc
        if self._local is not None and self._local.fingerprint != info.fingerprint:
            self._local_known = False  # another model now: fetch its tokenizer again
        return info

    async def _model_info_answer(self, request: bytes, deadline: Deadline) -> bytes:
        """`cde_model_info`'s INFO for REQUEST `request`."""
        tensor = InferInput(tp.REQUEST, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([request], dtype=np.object_))
        result = await self._infer(tp.MODEL_INFO_MODEL, [tensor], [tp.INFO], deadline.remaining())
        raw = result.as_numpy(tp.INFO)
        if raw is None or raw.size != 1:
            raise InternalError("cde_model_info returned no INFO")
        value = raw.reshape(-1)[0]
        return value if isinstance(value, bytes) else str(value).encode()

    async def _local_tokenizer(self, deadline: Deadline) -> LocalTokenizer | None:
        """The served tokenizer, fetched from `cde_model_info` once (None: Triton tokenizes)."""
        if self._local_known:
            return self._local
        async with self._local_lock:
            if not self._local_known:
                answer = await self._model_info_answer(tp.TOKENIZER_REQUEST, deadline)
                self._local = self._tokenizer_of(answer)
                self._local_known = True
        return self._local

    def _tokenizer_of(self, answer: bytes) -> LocalTokenizer | None:
        try:
            local = LocalTokenizer.from_info(answer)
        except Exception as exc:  # tokenizers raises its own types for a malformed file
            logger.warning("unusable tokenizer from %s (%s): cde_tokenize tokenizes", self.url, exc)
            return None
        if local is None:
            logger.info("%s hands out no tokenizer: cde_tokenize tokenizes", self.url)
        return local

    async def reload_model(self, model: str, timeout_s: float = 60.0) -> bool:
        """Unload and load `model` (new stubs), then any ensemble that stopped being ready;
        whether that worked (a Triton not in explicit model-control mode refuses)."""
        try:
            await self._client.unload_model(model, headers=self._headers, client_timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            while await self._client.is_model_ready(model, headers=self._headers):
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.1)
            await self._client.load_model(model, headers=self._headers, client_timeout=timeout_s)
            for ensemble in (tp.EMBED_ENSEMBLE, tp.CONTEXT_ENSEMBLE):
                if not await self._client.is_model_ready(ensemble, headers=self._headers):
                    await self._client.load_model(
                        ensemble, headers=self._headers, client_timeout=timeout_s
                    )
        except InferenceServerException as exc:
            logger.warning("reloading %s on %s failed: %s", model, self.url, exc)
            return False
        logger.warning("reloaded %s on %s", model, self.url)
        return True

    async def probe(self, timeout_s: float = 10.0) -> bool:
        """Whether every model the gateway uses answers a real (tiny) inference: the check that
        finds dead stubs, which Triton's readiness does not."""
        deadline = Deadline.within(timeout_s, timeout_s)
        probe_context = ContextRef(PROBE_CONTEXT_ID, _no_embeddings)
        try:
            await self.model_info(deadline.remaining())
            await self._path.embed_context(["probe"], deadline)
            await self._path.embed(
                ["probe"], probe_context, deadline, max_tokens=1 << 30, allow_truncation=True
            )
        except _ProbeAnswered:
            return True  # the second stage answered the cache miss: its stub is alive
        except ServiceError as exc:
            logger.info("probe of %s failed: %s", self.url, exc)
            return False
        return True

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
        return await self._path.embed(
            texts,
            load_once(context),
            Deadline.within(timeout_s, self._timeout_s),
            max_tokens=max_tokens,
            allow_truncation=allow_truncation,
        )

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
        """Second-stage embeddings of pre-tokenized `rows` after the prompt `prefix` (always the
        direct path: `cde_tokenize` for the prefix, then `cde_second_stage`)."""
        return await self._direct.embed_tokens(
            rows,
            prefix,
            load_once(context),
            Deadline.within(timeout_s, self._timeout_s),
            max_tokens=max_tokens,
            allow_truncation=allow_truncation,
        )

    async def embed_context(
        self, documents: Sequence[str], *, timeout_s: float | None = None
    ) -> Encoded:
        """First-stage dataset embeddings of `documents` (prefixes already applied)."""
        return await self._path.embed_context(
            documents, Deadline.within(timeout_s, self._timeout_s)
        )

    # --- transport ----------------------------------------------------------------------------
    async def _infer(
        self, model: str, inputs: list[InferInput], outputs: list[str], timeout_s: float
    ) -> Any:
        """One inference call; Triton failures become ServiceError (or ContextNotCached)."""
        started = time.perf_counter()
        code = "OK"
        try:
            return await self._client.infer(
                model,
                inputs,
                outputs=[InferRequestedOutput(name) for name in outputs],
                headers=self._headers,
                client_timeout=timeout_s,
            )
        except InferenceServerException as exc:
            code = _status_name(exc)
            message = str(exc.message() or "")
            if code == "NOT_FOUND" and tp.is_context_not_cached(message):
                code = "CONTEXT_NOT_CACHED"
                raise ContextNotCached(message) from None
            raise _inference_error(model, code, message) from None
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self._observer.triton_call(model, time.perf_counter() - started, code)


class _ProbeAnswered(Exception):
    """The probe's second-stage call reached a live stub (it asked for the embeddings)."""


async def _no_embeddings() -> FloatMatrix:
    raise _ProbeAnswered


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _status_name(exc: InferenceServerException) -> str:
    """The status name (UNAVAILABLE) of tritonclient's "StatusCode.UNAVAILABLE"."""
    status = str(exc.status() or "UNKNOWN")
    return status.rsplit(".", 1)[-1]


def _inference_error(model: str, code: str, message: str) -> ServiceError:
    """The gateway's error for a failed Triton call."""
    if _STUB_FAILED in message:
        logger.error("triton %s: %s", model, message)
        return ModelFailedError(f"inference server unavailable ({model}): {message}", model=model)
    if _QUEUE_FULL in message:  # a live server at capacity: not down, retry shortly
        return InferenceBusyError(
            f"the inference server is at capacity ({model}: its queue is full); retry shortly",
            retry_after=QUEUE_FULL_RETRY_S,
        )
    if code in ("UNAVAILABLE", "CANCELLED") or (code == "NOT_FOUND" and "model" in message):
        return InferenceUnavailableError(f"inference server unavailable ({model}): {message}")
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(f"the model did not answer in time ({model})")
    if code == "INVALID_ARGUMENT":
        return InvalidArgumentError(f"the model rejected the input: {message}")
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhaustedError(f"the inference server is overloaded: {message}")
    logger.error("triton %s failed with %s: %s", model, code, message)
    return InternalError(f"inference failed ({model}, {code})")
