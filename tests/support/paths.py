"""Where the tests find the repository and the shared tiny checkpoint fixture.

The fixture lives in `../shared/fixtures/cde-tiny` beside the checkout (as on CI);
`CDE_TINY_CHECKPOINT` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CHECKPOINT = Path(
    os.environ.get("CDE_TINY_CHECKPOINT", REPO_ROOT.parent / "shared" / "fixtures" / "cde-tiny")
)
GOLDEN_JSON = TINY_CHECKPOINT / "golden.json"
V2_TINY_CHECKPOINT = Path(
    os.environ.get(
        "CDE_V2_TINY_CHECKPOINT", REPO_ROOT.parent / "shared" / "fixtures" / "cde-v2-tiny"
    )
)
V2_GOLDEN_JSON = V2_TINY_CHECKPOINT / "golden.json"
