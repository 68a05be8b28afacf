"""Shared test setup: offline Hugging Face, the fixture plugins, and one marker per folder.

- `tests/unit/`: no processes beyond the test's own (models in-process, fakes for inference);
- `tests/integration/`: one real stack (tritonserver, gateway, redis-server) per session;
- `tests/system/`: several processes at once, restarts and faults.
`make test-fast` runs the unit folder alone; `make test` runs all three.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every test gateway serves its HTTP API on a free port (the default 8080 would collide).
os.environ.setdefault("CDE_HTTP_PORT", "0")

# A missing plugin module must fail the run, never drop its fixtures silently.
pytest_plugins = [
    "support.triton_fixtures",
    "support.store_fixtures",
    "support.gateway_fixtures",
    "support.client_fixtures",
    "support.process_fixtures",
]

FOLDER_MARKERS = ("unit", "integration", "system")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder; a test file outside the three folders is an error."""
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(
                f"{item.path}: test files live in tests/{{{','.join(FOLDER_MARKERS)}}}/"
            )
        item.add_marker(getattr(pytest.mark, folder))
