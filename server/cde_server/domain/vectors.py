"""Normalizing embeddings, with the rule for vectors too short to have a direction."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

NEAR_ZERO_NORM = 1e-4
"""Raw vectors shorter than this are float32 noise (e.g. the demo model on a text equal to its
context's mean): normalized, they point anywhere, so they are returned as zeros instead."""


def normalize_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Each row scaled to length 1; rows shorter than NEAR_ZERO_NORM become all zeros."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scaled: npt.NDArray[np.float32] = (vectors / np.maximum(norms, NEAR_ZERO_NORM)).astype(
        np.float32, copy=False
    )
    scaled[(norms < NEAR_ZERO_NORM).reshape(-1)] = 0.0
    return scaled
