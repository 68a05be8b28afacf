"""Shared test setup: offline Hugging Face, fixture paths, and the process fixtures plugins."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


pytest_plugins = [
    name
    for name in (
        "triton_fixtures",
        "store_fixtures",
        "gateway_fixtures",
        "client_fixtures",
        "process_fixtures",
    )
    if (Path(__file__).parent / f"{name}.py").exists()
]
