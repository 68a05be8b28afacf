"""Conversions between domain values and cde.v1 protobuf messages (the gateway's only place)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import numpy.typing as npt
from cde.v1 import embedding_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from cde_server.domain.prompts import Prompt
from cde_server.stores.base import ContextSetSummary, RevisionHistory, Sampling

_FLOAT32_LE = np.dtype("<f4")
_SAMPLING = {
    "exact": pb.CONTEXT_SAMPLING_EXACT,
    "subsampled": pb.CONTEXT_SAMPLING_SUBSAMPLED,
    "oversampled": pb.CONTEXT_SAMPLING_OVERSAMPLED,
}


def matrix(values: npt.NDArray[np.float32]) -> pb.Matrix:
    """A [rows, dim] array as Matrix (float32 little-endian, row-major)."""
    array = np.ascontiguousarray(values, dtype=_FLOAT32_LE)
    rows, dim = array.shape
    return pb.Matrix(data=array.tobytes(), rows=rows, dim=dim)


def matrix_values(message: pb.Matrix) -> npt.NDArray[np.float32]:
    """Inverse of `matrix` (read-only view of the message bytes)."""
    return np.frombuffer(message.data, dtype=_FLOAT32_LE).reshape(message.rows, message.dim)


def sampling(value: Sampling) -> pb.ContextSampling.ValueType:
    """Domain sampling label as the proto enum."""
    return _SAMPLING[value]


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def context_set(
    summary: ContextSetSummary, *, model_fingerprint: str, active_revision: int = 0
) -> pb.ContextSet:
    """A stored revision's metadata; `compatible` compares its fingerprint with the served
    model's; `active_revision` 0 means the revision described is the active one."""
    created = _timestamp(summary.created_at)
    return pb.ContextSet(
        name=summary.name,
        create_time=created,
        model_fingerprint=summary.model_fingerprint,
        prompt=summary.prompt,
        source_document_count=summary.source_document_count,
        context_size=summary.context_size,
        revision=summary.revision,
        sampling=sampling(summary.sampling),
        compatible=summary.model_fingerprint == model_fingerprint,
        context_id=summary.context_id,
        active_revision=active_revision or summary.revision,
    )


def revisions(history: RevisionHistory) -> list[pb.ContextSetRevision]:
    """The retained revisions of a set, ascending."""
    return [
        pb.ContextSetRevision(
            revision=r.revision,
            create_time=_timestamp(r.created_at),
            sampling=sampling(r.sampling),
            source_document_count=r.source_document_count,
            context_id=r.context_id,
            model_fingerprint=r.model_fingerprint,
            prompt=r.prompt,
            active=r.revision == history.active_revision,
        )
        for r in history.revisions
    ]


def prompt(value: Prompt) -> pb.Prompt:
    """A prompt message."""
    return pb.Prompt(name=value.name, text=value.text, builtin=value.builtin)
