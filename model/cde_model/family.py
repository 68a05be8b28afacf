"""Which model family a checkpoint's `config.json` describes (no torch).

v1 (cde-small-v1) runs on a nomic-bert backbone, v2 (cde-small-v2) on a ModernBERT one; the
published configs name the backbone by hub id only (`embedder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Family = Literal["v1", "v2"]
V1: Family = "v1"
V2: Family = "v2"
FAMILIES: tuple[Family, ...] = (V1, V2)
DEMO_FAMILY = "demo"  # the offline MiniLM stand-in is neither


def read_config(path: Path) -> dict[str, Any]:
    """The parsed `config.json` object; bad JSON or a non-object raise ValueError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return raw


def model_family(raw: dict[str, Any]) -> Family:
    """v2 when the embedder (or the inline `embedder_config`) is a ModernBERT, else v1."""
    embedder = raw.get("embedder")
    if isinstance(embedder, str) and "modernbert" in embedder.lower():
        return V2
    embedder_config = raw.get("embedder_config")
    if isinstance(embedder_config, dict) and embedder_config.get("model_type") == "modernbert":
        return V2
    return V1
