"""Vectors on the wire of the HTTP API: JSON numbers, or base64 of little-endian float32."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

_FLOAT32_LE = np.dtype("<f4")
_ANY_JSON: TypeAdapter[Any] = TypeAdapter(Any)


def rows_as(vectors: npt.NDArray[np.float32], encoding_format: str) -> list[Any]:
    """Each row as a list of floats ("float") or a base64 string ("base64")."""
    if encoding_format == "base64":
        array = np.ascontiguousarray(vectors, dtype=_FLOAT32_LE)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in array]
    rows: list[Any] = vectors.astype(np.float32, copy=False).tolist()
    return rows


def json_bytes(payload: Any) -> bytes:
    """`payload` (dicts, lists, numbers, strings) as compact JSON, serialized in Rust."""
    return _ANY_JSON.dump_json(payload)
