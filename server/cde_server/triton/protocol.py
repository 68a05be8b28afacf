"""Names and conventions of the Triton model repository, shared by server and clients.

Only numpy and the standard library are imported here, so the gateway and load tools can use
this module without torch or the Triton client.

Cache-miss protocol of `cde_second_stage` (and of the `cde_embed` ensemble): a request without
DATASET_EMBEDDINGS whose CONTEXT_ID is not in the instance's cache fails with status NOT_FOUND
and a message containing `CONTEXT_NOT_CACHED_MARKER`. The caller resends the same request with
DATASET_EMBEDDINGS attached (shape [rows, N, hidden], the same N x hidden matrix repeated on
every row, because Triton requires one batch size for all inputs of a request). A request that
carries them (re)fills the cache; later requests can omit them. To avoid shipping one copy per
row, a caller may instead prime the cache with a one-row request that carries the embeddings and
then resend the rest without; it must still handle a second miss (another instance, eviction).
CONTEXT_ID must equal `context_id(dataset_embeddings)`; a mismatch is INVALID_ARG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

CONTEXT_NOT_CACHED_MARKER = "CDE_CONTEXT_NOT_CACHED"
"""Substring of the error message of a cache miss (status NOT_FOUND / gRPC NOT_FOUND)."""

CONTEXT_ID_LENGTH = 32
"""Hex characters in a context id (first 128 bits of the sha256 digest)."""

# Model names.
TOKENIZE_MODEL = "cde_tokenize"
FIRST_STAGE_MODEL = "cde_first_stage"
SECOND_STAGE_MODEL = "cde_second_stage"
CONTEXT_ENSEMBLE = "cde_context"
EMBED_ENSEMBLE = "cde_embed"
MODEL_INFO_MODEL = "cde_model_info"
ALL_MODELS = (
    TOKENIZE_MODEL,
    FIRST_STAGE_MODEL,
    SECOND_STAGE_MODEL,
    CONTEXT_ENSEMBLE,
    EMBED_ENSEMBLE,
    MODEL_INFO_MODEL,
)

# Tensor names (inputs and outputs). Every tensor has a leading batch dimension.
TEXT = "TEXT"  # BYTES [rows, 1], UTF-8, prefixes already applied by the caller
INPUT_IDS = "INPUT_IDS"  # INT64 [rows, tokens], right-padded
ATTENTION_MASK = "ATTENTION_MASK"  # INT64 [rows, tokens], 1 = token, 0 = padding
CONTEXT_ID = "CONTEXT_ID"  # BYTES [rows, 1], ASCII hex from context_id()
DATASET_EMBEDDINGS = "DATASET_EMBEDDINGS"  # FP32 [rows, N, hidden], optional
DATASET_EMBEDDING = "DATASET_EMBEDDING"  # FP32 [rows, hidden], output of the first stage
EMBEDDING = "EMBEDDING"  # FP32 [rows, hidden], raw (unnormalized) second-stage output
TOKEN_COUNT = "TOKEN_COUNT"  # INT32 [rows, 1], tokens after truncation incl. [CLS]/[SEP]
TRUNCATED = "TRUNCATED"  # BOOL [rows, 1], text reached max_tokens (cut, or exactly that long)
# cde_model_info (not batched): REQUEST BYTES [1] (any value) -> INFO BYTES [1], a JSON object
# with name, fingerprint, hidden_size, corpus_size, max_tokens, vocab_size (the tokenizer's;
# token ids lie in [0, vocab_size)), dtype, device ("cpu" | "gpu"). REQUEST "tokenizer" instead
# answers {"fingerprint", "max_tokens", "tokenizer": the tokenizer.json text cde_tokenize uses}
# (repositories that predate it answer the usual object, without "tokenizer").
REQUEST = "REQUEST"
INFO = "INFO"
TOKENIZER_REQUEST = b"tokenizer"
TOKENIZER_FIELD = "tokenizer"

MAX_BATCH_ROWS = 64

SECRET_HEADER = "cde-triton-secret"
"""The key of the secret a restricted Triton requires: the HTTP header's name; gRPC calls carry
it as metadata GRPC_SECRET_HEADER (Triton adds the prefix)."""
GRPC_SECRET_HEADER = f"triton-grpc-protocol-{SECRET_HEADER}"
RESTRICTED_PROTOCOLS = (
    "health,metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
)
"""Every protocol group of Triton 2.51: all of them require the secret when one is set."""


def secret_headers(secret: str | None) -> dict[str, str] | None:
    """The gRPC metadata every Triton call sends (None without a secret)."""
    return None if secret is None else {GRPC_SECRET_HEADER: secret}


DEFAULT_CONTEXT_CACHE_BYTES = 512 * 1024 * 1024
"""Prepared-context cache budget of each `cde_second_stage` instance unless configured."""
"""Rows one request to an ensemble may carry (its max_batch_size); split larger batches."""


def context_id(embeddings: Array) -> str:
    """Content hash of dataset embeddings: sha256 of their float32 little-endian bytes, 32 hex."""
    data = np.ascontiguousarray(embeddings, dtype="<f4")
    return hashlib.sha256(data.tobytes()).hexdigest()[:CONTEXT_ID_LENGTH]


def is_context_not_cached(message: str) -> bool:
    """Whether an error message from Triton reports a context-cache miss."""
    return CONTEXT_NOT_CACHED_MARKER in message


def text_tensor(texts: Sequence[str]) -> Array:
    """TEXT input for `texts`: object array of UTF-8 bytes, shape [rows, 1]."""
    return np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_).reshape(-1, 1)


def context_id_tensor(context: str, rows: int) -> Array:
    """CONTEXT_ID input: the same id on each of `rows` rows, shape [rows, 1]."""
    return np.full((rows, 1), context.encode("ascii"), dtype=np.object_)


def dataset_embeddings_tensor(embeddings: Array, rows: int) -> Array:
    """DATASET_EMBEDDINGS input: [N, hidden] repeated on each of `rows` rows (a broadcast view)."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    return np.broadcast_to(matrix, (rows, *matrix.shape))
