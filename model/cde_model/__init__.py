"""cde-small-v1 and cde-small-v2 contextual document embeddings in torch, plus an offline demo.

`from cde_model import load_model, EmbeddingModel, PreparedContext, ModelSpec`. Those names are
imported lazily, so `cde_model.context`, `cde_model.prompts` and `cde_model.demo_corpus` stay
importable without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cde_model.description import ModelDescription, describe_model
    from cde_model.interface import EmbeddingModel, ModelSpec, PreparedContext
    from cde_model.loader import load_model

__all__ = [
    "EmbeddingModel",
    "ModelDescription",
    "ModelSpec",
    "PreparedContext",
    "describe_model",
    "load_model",
]

_LAZY = {
    "EmbeddingModel": "cde_model.interface",
    "ModelSpec": "cde_model.description",
    "ModelDescription": "cde_model.description",
    "describe_model": "cde_model.description",
    "PreparedContext": "cde_model.interface",
    "load_model": "cde_model.loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cde_model' has no attribute {name!r}")
