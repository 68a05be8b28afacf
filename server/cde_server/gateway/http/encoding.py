"""Vectors on the wire of the HTTP API: JSON numbers, or base64 of little-endian float32."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

_FLOAT32_LE = np.dtype("<f4")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def rows_as(vectors: npt.NDArray[np.float32], encoding_format: str) -> list[Any]:
    """Each row as a float32 array ("float": JSON numbers, float32's shortest round-trip
    digits) or a base64 string ("base64")."""
    array = np.ascontiguousarray(vectors, dtype=_FLOAT32_LE)
    if encoding_format == "base64":
        return [base64.b64encode(row.data).decode("ascii") for row in array]
    return list(array)


def json_bytes(payload: Any) -> bytes:
    """`payload` (dicts, lists, numbers, strings, float32 arrays) as compact JSON (orjson)."""
    return orjson.dumps(payload, option=_JSON_OPTIONS)
