"""Shared test setup: offline Hugging Face, fixture paths, and the process fixtures plugins."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every test gateway serves its HTTP API on a free port (the default 8080 would collide).
os.environ.setdefault("CDE_HTTP_PORT", "0")


# A missing plugin module must fail the run, never drop its fixtures silently.
pytest_plugins = [
    "triton_fixtures",
    "store_fixtures",
    "gateway_fixtures",
    "client_fixtures",
    "process_fixtures",
]
